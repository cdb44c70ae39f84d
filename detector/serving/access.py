"""Who may call the server: a bearer token (--token or $DETECTOR_SERVE_TOKEN) on /predict and
/metrics, and a loud warning when the server listens beyond this machine without one."""
from __future__ import annotations

import hmac
import ipaddress

from detector.errors import UploadError


def check_bearer(authorization: str | None, token: str | None) -> None:
    """Nothing when no token is set or `authorization` carries it; else UploadError 401."""
    if token is None:
        return
    scheme, _, given = (authorization or "").partition(" ")
    if scheme.lower() != "bearer" or not given:
        raise UploadError(401, "missing token: send the header 'Authorization: Bearer TOKEN'")
    if not hmac.compare_digest(given.strip().encode(), token.encode()):  # constant time: no guessing by timing
        raise UploadError(401, "wrong token")


def is_loopback(host: str) -> bool:
    """True for an address only this machine reaches (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


def exposure_warning(host: str, port: int, token: str | None) -> str | None:
    """The warning to print before serving, or None: listening beyond loopback with no token
    lets anyone who reaches the port run the model and read its class names."""
    if token is not None or is_loopback(host):
        return None
    line = "!" * 78
    return (f"{line}\nWARNING: detector serve listens on {host}:{port}, reachable from other machines, with NO\n"
            "token: anyone who reaches this port can send images and read the results. Set a token\n"
            f"(export DETECTOR_SERVE_TOKEN=...; clients send 'Authorization: Bearer ...'), or bind\n"
            f"--host 127.0.0.1 behind a proxy that authenticates.\n{line}")
