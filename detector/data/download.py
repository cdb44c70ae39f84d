"""Fetch a URL into a file, all or nothing: the bytes go to a temporary file beside the target,
their SHA-256 is computed on the way, and only a complete (and, when a checksum is known,
matching) download is moved into place. A partial or corrupt file is deleted, never left behind."""
from __future__ import annotations

import hashlib
import http.client
import os
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

from detector.errors import DownloadError


def sha256_of(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        while block := file.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def download(url: str, target: Path, sha256: str | None = None, *, timeout: float = 60.0,
             chunk: int = 1 << 20) -> str:
    """Download `url` to `target`; return the SHA-256 of the bytes. With `sha256`, a different
    hash is refused. Refused or failed downloads raise DownloadError and leave no file."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    try:
        with os.fdopen(handle, "wb") as out:
            digest, received, expected = _fetch(url, out, timeout, chunk)
        if expected is not None and received != expected:
            raise DownloadError(f"{url}: download stopped after {received:,} of {expected:,} bytes; "
                                "nothing was kept, run the command again")
        got = digest.hexdigest()
        if sha256 is not None and got != sha256:
            raise DownloadError(f"{url}: SHA-256 of the {received:,} bytes downloaded is {got}, not the recorded "
                                f"{sha256}; the file is corrupt or was changed upstream, and was not kept")
        os.replace(temporary, target)
        return got
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _fetch(url: str, out, timeout: float, chunk: int):
    """Stream the body of `url` into `out`: (sha256 digest, bytes received, Content-Length or None)."""
    digest, received = hashlib.sha256(), 0
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length is not None and length.isdigit() else None
            while True:
                try:
                    block = response.read(chunk)
                except http.client.IncompleteRead as error:  # the server closed before Content-Length
                    block = error.partial
                    out.write(block)
                    digest.update(block)
                    received += len(block)
                    break
                if not block:
                    break
                out.write(block)
                digest.update(block)
                received += len(block)
    except urllib.error.HTTPError as error:
        raise DownloadError(f"{url}: HTTP {error.code} {error.reason}") from None
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", error)
        raise DownloadError(f"{url}: download failed: {reason}") from None
    return digest, received, expected
