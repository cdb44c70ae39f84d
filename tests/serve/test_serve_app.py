"""`detector serve`'s app in process (FastAPI's TestClient): the decompression bomb is refused
from its header, every error is JSON {"error": ...} with its 4xx, access and docs are off or
on as asked, and /metrics counts what happened."""
import resource
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from serve_helpers import bomb_png, multipart, photo, png

from detector.errors import InputError
from detector.serve import ServeSettings, create_app
from detector.serving.access import exposure_warning


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return bomb_png(15000)  # 225 Mpx: above PIL's own bomb limit (179 Mpx), 219 KB on the wire


def client_for(predictor, **settings) -> TestClient:
    return TestClient(create_app(predictor, "small.pt", settings=ServeSettings(**settings)))


def test_a_decompression_bomb_is_refused_from_its_header_in_milliseconds(predictor, bomb):
    """The issue's probe: before, PIL's bomb error fell through to OpenCV, which decoded all of
    it (3 x 225 MB here) before the size check."""
    client = client_for(predictor)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB
    started = time.perf_counter()
    reply = client.post("/predict", files={"file": ("bomb.png", bomb, "image/png")})
    elapsed = time.perf_counter() - started
    grown_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak_before) / 1024
    assert reply.status_code == 413
    assert reply.json() == {"error": "bomb.png: 225,000,000 pixels, more than the limit of 40000000 (a decompression bomb?)"}
    assert elapsed < 0.5 and grown_mib < 100, (elapsed, grown_mib)


def test_every_error_is_json_with_its_4xx(predictor):
    client = client_for(predictor, max_pixels=1_000_000)
    good = png(photo())
    cut = png(photo(index=1))[:-300]

    def post(body_and_type):
        body, content_type = body_and_type
        return client.post("/predict", content=body, headers={"Content-Type": content_type})

    cases = [
        (client.get("/nowhere"), 404, "GET /nowhere: not found"),
        (client.get("/predict"), 405, "GET /predict: method not allowed"),
        (client.get("/docs"), 404, "GET /docs: not found"),
        (client.get("/openapi.json"), 404, "GET /openapi.json: not found"),
        (post(multipart([("file", b"a\x00b.png", good)])), 400, "the file name 'a\\x00b.png' holds a control character"),
        (post(multipart([("file", b"a.png", good), ("file", b"b.png", good)])), 400, "more than one file"),
        (post(multipart([("image", b"a.png", good)])), 400, "a file in the field 'image'"),
        (post(multipart([("note", None, b"hello")])), 400, "no file"),
        (post((b"--x\r\nContent-Disposition: form-data; name=\"file\"\r\n\r\nabc", "multipart/form-data; boundary=x")),
         400, "malformed multipart body"),
        (client.post("/predict", data={"x": "1"}), 400, "no file: send the image as the multipart field 'file'"),
        (client.post("/predict", files={"file": ("empty.png", b"", "image/png")}), 400, "empty.png: empty upload"),
        (client.post("/predict", files={"file": ("notes.txt", b"not pixels", "text/plain")}), 415,
         "notes.txt: not an image"),
        (client.post("/predict", files={"file": ("cut.png", cut, "image/png")}), 415, "cut.png: truncated"),
        (client.post("/predict", files={"file": ("big.png", png(np.zeros((1200, 1000, 3), np.uint8)), "image/png")}),
         413, "big.png: 1000x1200 pixels, more than the limit of 1000000"),
        (client.post("/predict", files={"file": ("strip.png", png(np.zeros((1, 2000, 3), np.uint8)), "image/png")}),
         422, "strip.png"),
    ]
    for reply, status, message in cases:
        assert reply.status_code == status, (message, reply.text)
        assert list(reply.json()) == ["error"] and reply.json()["error"].startswith(message), reply.json()
    reply = client.post("/predict", files={"file": ("ok.png", good, "image/png")})
    assert reply.status_code == 200 and reply.json()["detections"]


def test_the_same_detections_as_the_predictor(predictor):
    image = photo((240, 320), index=2)
    reply = client_for(predictor).post("/predict", files={"file": ("coffee.png", png(image), "image/png")})
    body, expected = reply.json(), predictor.predict([image])[0]
    assert (body["file"], body["width"], body["height"]) == ("coffee.png", 320, 240)
    assert len(body["detections"]) == len(expected["scores"]) > 0
    for got, box, score in zip(body["detections"], expected["boxes"], expected["scores"]):
        assert got["bbox_xyxy"] == pytest.approx(np.asarray(box).tolist(), abs=0.01)
        assert got["score"] == pytest.approx(float(score), abs=1e-4)


def test_a_token_guards_predict_and_metrics_but_not_health(predictor):
    client = client_for(predictor, token="s3cret")
    files = {"file": ("ok.png", png(photo()), "image/png")}
    for headers, message in (({}, "missing token"), ({"Authorization": "Bearer nope"}, "wrong token"),
                             ({"Authorization": "Basic s3cret"}, "missing token")):
        for reply in (client.post("/predict", files=files, headers=headers), client.get("/metrics", headers=headers)):
            assert reply.status_code == 401 and reply.json()["error"].startswith(message)
            assert reply.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/health").status_code == 200
    assert client.post("/predict", files=files, headers={"Authorization": "Bearer s3cret"}).status_code == 200
    assert client.get("/metrics", headers={"Authorization": "Bearer s3cret"}).status_code == 200


def test_cors_and_docs_only_when_asked(predictor):
    preflight = {"Origin": "https://app.example.com", "Access-Control-Request-Method": "POST"}
    closed = client_for(predictor)
    assert "access-control-allow-origin" not in closed.options("/predict", headers=preflight).headers
    opened = client_for(predictor, cors_origins=("https://app.example.com",), docs=True)
    assert opened.options("/predict", headers=preflight).headers["access-control-allow-origin"] == "https://app.example.com"
    other = {**preflight, "Origin": "https://evil.example.com"}
    assert "access-control-allow-origin" not in opened.options("/predict", headers=other).headers
    assert opened.get("/docs").status_code == 200 and opened.get("/openapi.json").json()["paths"]["/predict"]


def test_metrics_count_requests_errors_latency_and_batches(predictor):
    client = client_for(predictor)
    client.post("/predict", files={"file": ("ok.png", png(photo()), "image/png")})
    client.post("/predict", files={"file": ("notes.txt", b"text", "text/plain")})
    client.get("/nowhere")
    text = client.get("/metrics").text
    for line in ('detector_requests_total{path="/predict",status="200"} 1.0',
                 'detector_requests_total{path="/predict",status="415"} 1.0',
                 'detector_requests_total{path="other",status="404"} 1.0',
                 'detector_errors_total{status="415"} 1.0', 'detector_errors_total{status="404"} 1.0',
                 'detector_request_seconds_count{path="/predict"} 2.0', 'detector_queue_depth 0.0',
                 'detector_batch_size_count 1.0', 'detector_batch_size_bucket{le="1.0"} 1.0',
                 'detector_inference_seconds_count 1.0'):
        assert line in text, line
    client_for(predictor)  # a second app: its own registry, no "Duplicated timeseries" error


def test_settings_are_checked_and_an_open_bind_without_token_is_warned_about():
    with pytest.raises(InputError, match="^--queue must be >= 1, got 0$"):
        ServeSettings(queue_size=0)
    with pytest.raises(InputError, match="the token .* is empty"):
        ServeSettings(token=" ")
    warning = exposure_warning("0.0.0.0", 8000, None)
    assert "WARNING: detector serve listens on 0.0.0.0:8000" in warning and "NO\ntoken" in warning
    assert exposure_warning("0.0.0.0", 8000, "s3cret") is None
    assert exposure_warning("127.0.0.1", 8000, None) is None and exposure_warning("::1", 8000, None) is None
    assert exposure_warning("localhost", 8000, None) is None and exposure_warning("example.com", 80, None)


def test_a_bug_is_a_500_in_the_same_shape_without_the_traceback(predictor):
    class Broken:
        category_names, category_ids = predictor.category_names, predictor.category_ids

        def check_size(self, height, width, name):
            pass

        def predict(self, images, batch_size=4):
            raise RuntimeError("secret internals /home/me/model.py line 3")

    client = TestClient(create_app(Broken(), "broken.pt"), raise_server_exceptions=False)
    reply = client.post("/predict", files={"file": ("ok.png", png(photo()), "image/png")})
    assert reply.status_code == 500
    assert reply.json() == {"error": "internal error (RuntimeError); see the server's log"}
