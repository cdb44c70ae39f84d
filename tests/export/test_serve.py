"""`detector serve`, started as a real server process, asked by a real HTTP client: detections
equal the predictor's, bad uploads get a 4xx JSON error naming the problem, and it keeps serving."""
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np
import pytest

from export_helpers import photos, resized

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def server(lite0):
    _, onnx_path, *_ = lite0
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen([sys.executable, "-m", "detector.cli", "serve", "--weights", str(onnx_path),
                                "--port", str(port), "--max-pixels", "1000000"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"server did not start: {process.stdout.read()}")
        time.sleep(0.3)
    yield url
    process.terminate()
    process.wait(timeout=20)


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def test_health_page_and_predict(server, lite0):
    predictor = lite0[2]
    health = httpx.get(f"{server}/health").json()
    assert health == {"status": "ok", "weights": "model.onnx", "classes": ["circle", "square", "triangle", "cross"]}
    page = httpx.get(f"{server}/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"] and 'fetch("/predict"' in page.text
    image = resized(photos()[0], (333, 517))
    reply = httpx.post(f"{server}/predict", files={"file": ("astronaut.png", png(image), "image/png")}, timeout=60)
    assert reply.status_code == 200
    body = reply.json()
    expected = predictor.predict([image])[0]
    assert (body["file"], body["width"], body["height"]) == ("astronaut.png", 517, 333)
    assert len(body["detections"]) == len(expected["scores"]) > 0
    for got, box, score, category_id, name in zip(body["detections"], expected["boxes"], expected["scores"],
                                                   expected["category_ids"], expected["names"]):
        assert got["bbox_xyxy"] == pytest.approx(box.tolist(), abs=0.01)
        assert got["score"] == pytest.approx(float(score), abs=1e-4)
        assert (got["category_id"], got["name"]) == (category_id, name)


def test_bad_uploads_get_a_4xx_json_error_and_the_server_keeps_serving(server):
    cut = png(photos()[1])[:-300]
    cases = [
        ({"file": ("notes.txt", b"this is not an image", "text/plain")}, 415, "notes.txt: not an image"),
        ({"file": ("empty.png", b"", "image/png")}, 400, "empty.png: empty upload"),
        ({"file": ("cut.png", cut, "image/png")}, 415, "cut.png: truncated"),
        ({"file": ("huge.png", png(np.zeros((1200, 1000, 3), np.uint8)), "image/png")}, 413,
         "huge.png: 1000x1200 pixels, more than the limit of 1000000"),
        ({}, 400, "no file"),
    ]
    for files, status, message in cases:
        reply = httpx.post(f"{server}/predict", files=files or None, data=None if files else {"x": "1"}, timeout=30)
        assert reply.status_code == status, (message, reply.text)
        assert reply.json()["error"].startswith(message), reply.json()
    assert httpx.get(f"{server}/health").status_code == 200
    small = resized(photos()[2], (200, 300))
    assert httpx.post(f"{server}/predict", files={"file": ("ok.png", png(small), "image/png")}, timeout=60).status_code == 200


def test_a_checkpoint_serves_the_same_detections_as_its_export(lite0):
    """The app around the eager predictor of the .pt (in-process client): same JSON layout, and
    the detections of the export's server within the parity criterion."""
    from fastapi.testclient import TestClient

    from detector.inference import load_predictor
    from detector.serve import create_app
    from export_helpers import assert_same_detections

    checkpoint, onnx_path, *_ = lite0
    image = resized(photos()[1], (333, 517))
    replies = {}
    for weights in (checkpoint, onnx_path):
        client = TestClient(create_app(load_predictor(weights, device="cpu"), weights.name))
        assert client.get("/health").json()["weights"] == weights.name
        reply = client.post("/predict", files={"file": ("cat.png", png(image), "image/png")})
        assert reply.status_code == 200
        detections = reply.json()["detections"]
        replies[weights.suffix] = {"boxes": np.array([d["bbox_xyxy"] for d in detections]).reshape(-1, 4),
                                   "scores": np.array([d["score"] for d in detections]),
                                   "labels": np.array([d["category_id"] for d in detections])}
    assert len(replies[".pt"]["scores"]) > 0
    assert_same_detections(replies[".pt"], replies[".onnx"], "served")
