"""Shared by the serve tests: a small real checkpoint, photos as PNG bytes, and hostile files
made on the spot (a decompression-bomb PNG)."""
from __future__ import annotations

import contextlib
import socket
import sys
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from skimage import data

from detector import build_model, load_config
from detector.config import config_to_dict
from detector.engine.checkpoint import save_checkpoint

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "data"))
from data_helpers import bomb_png  # noqa: E402,F401  (one maker of hostile files, shared with the data tests)

SMALL = ["model.num_classes=2", "model.transform.min_size=128", "model.transform.max_size=192",
         "model.rpn.pre_nms_top_n_test=200", "model.rpn.post_nms_top_n_test=100"]
CATEGORIES = {"ids": [1, 2], "names": ["cat", "dog"]}


def make_checkpoint(path: Path) -> Path:
    """A checkpoint as `detector train` writes it: Lite0 at a small resize, heads drawn at random
    with a fixed seed so that real photos get detections."""
    config = load_config(None, SMALL)
    torch.manual_seed(0)
    model = build_model(config).eval()
    torch.nn.init.normal_(model.roi_heads.box_predictor.cls_score.weight, std=0.05)
    save_checkpoint({"model": model.state_dict(), "config": config_to_dict(config), "categories": CATEGORIES}, path)
    return path


def photo(size: tuple[int, int] = (200, 300), index: int = 0) -> np.ndarray:
    image = [data.astronaut, data.chelsea, data.coffee, data.rocket][index]()
    return cv2.resize(image, (size[1], size[0]), interpolation=cv2.INTER_AREA)


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


@contextlib.contextmanager
def running(app):
    """`app` served by uvicorn on a free port of 127.0.0.1 in a thread; yields the port."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="error"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.01)
    try:
        yield server.servers[0].sockets[0].getsockname()[1]
    finally:
        server.should_exit = True
        thread.join(timeout=20)


def raw_exchange(port: int, head: bytes, body_parts=(), pause: float = 0.0, timeout: float = 10.0):
    """Send `head` then each of `body_parts` (with `pause` seconds between), stop sending, and
    read the answer: (status, headers dict, body bytes, seconds from the last byte sent to the answer)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(head)
        for part in body_parts:
            time.sleep(pause)
            try:
                sock.sendall(part)
            except (BrokenPipeError, ConnectionResetError):  # the server answered and closed: read it
                break
        sent = time.monotonic()
        received = b""
        while b"\r\n\r\n" not in received or not complete(received):
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += chunk
        elapsed = time.monotonic() - sent
    head_text, _, body = received.partition(b"\r\n\r\n")
    lines = head_text.decode("latin-1").split("\r\n")
    headers = {key.lower(): value.strip() for key, _, value in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body, elapsed


def complete(received: bytes) -> bool:
    head, _, body = received.partition(b"\r\n\r\n")
    for line in head.decode("latin-1").split("\r\n")[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "content-length":
            return len(body) >= int(value)
    return False


def multipart(parts: list[tuple[str, bytes | None, bytes]], boundary: str = "xyzBOUNDARYxyz") -> tuple[bytes, str]:
    """A multipart/form-data body, built by hand so that it can hold what clients refuse to send
    (a NUL in a file name): parts are (field name, raw filename or None, content)."""
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"'.encode()
        if filename is not None:
            disposition += b'; filename="' + filename + b'"'
        body += b"--" + boundary.encode() + b"\r\nContent-Disposition: " + disposition + b"\r\n"
        body += b"Content-Type: application/octet-stream\r\n\r\n" + content + b"\r\n"
    return body + b"--" + boundary.encode() + b"--\r\n", f"multipart/form-data; boundary={boundary}"
