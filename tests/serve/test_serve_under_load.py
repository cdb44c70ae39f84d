"""`detector serve` over real sockets (uvicorn in a thread): limits are enforced while the body
streams in, slow or excess requests are refused in time, /health answers while the model
runs, and concurrent requests are predicted in batches with the same detections."""
import concurrent.futures
import re
import threading
import time

import httpx
import numpy as np
import pytest
from serve_helpers import multipart, photo, png, raw_exchange, running

from detector.serve import ServeSettings, create_app

MIB = 2**20


class SlowPredictor:
    """The real predictor, each call held `delay` s longer: long enough to see who waits for it."""

    def __init__(self, predictor, delay: float) -> None:
        self.predictor, self.delay = predictor, delay

    def predict(self, images, batch_size=4):
        time.sleep(self.delay)
        return self.predictor.predict(images, batch_size=batch_size)

    def __getattr__(self, name):
        return getattr(self.predictor, name)


def app_for(predictor, **settings):
    return create_app(predictor, "small.pt", settings=ServeSettings(**settings))


def head(length: int | None, content_type: str, token: str | None = None) -> bytes:
    lines = ["POST /predict HTTP/1.1", "Host: 127.0.0.1", f"Content-Type: {content_type}"]
    lines.append(f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def chunked(data: bytes) -> bytes:
    return f"{len(data):x}\r\n".encode() + data + b"\r\n"


def test_a_body_over_the_limit_is_refused_before_or_while_it_streams(predictor):
    with running(app_for(predictor, max_upload_bytes=MIB)) as port:
        # Content-Length says 200 MB: 413 at once, with not one byte of the body sent
        status, _, body, elapsed = raw_exchange(port, head(200 * MIB, "multipart/form-data; boundary=b"))
        assert status == 413 and elapsed < 2
        assert b"the body is 209715200 bytes (Content-Length), more than the limit of 1048576 bytes" in body
        # no Content-Length (chunked): refused once the count passes the limit; the rest is never sent
        start = b'--b\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\n\r\n'
        blocks = [chunked(start)] + [chunked(b"\0" * (256 * 2**10))] * 5  # 1.25 MiB, no final chunk
        status, _, body, elapsed = raw_exchange(port, head(None, "multipart/form-data; boundary=b"), blocks, pause=0.02)
        assert status == 413 and elapsed < 2
        assert b"refused while streaming" in body
        # and it keeps serving
        reply = httpx.post(f"http://127.0.0.1:{port}/predict", files={"file": ("ok.png", png(photo()), "image/png")})
        assert reply.status_code == 200


def test_a_slow_upload_times_out_and_a_full_queue_answers_503_with_retry_after(predictor):
    body, content_type = multipart([("file", b"ok.png", png(photo()))])
    with running(app_for(predictor, queue_size=1, timeout_s=1.0)) as port:
        holder = concurrent.futures.ThreadPoolExecutor(1).submit(  # sends half its body, then stalls
            raw_exchange, port, head(len(body), content_type), [body[: len(body) // 2]])
        time.sleep(0.3)
        reply = httpx.post(f"http://127.0.0.1:{port}/predict", content=body, headers={"Content-Type": content_type})
        assert reply.status_code == 503 and reply.headers["Retry-After"] == "1"
        assert reply.json()["error"].startswith("busy: 1 requests in progress, the limit is 1")
        status, _, answer, _ = holder.result(timeout=10)
        assert status == 408 and b"the upload took longer than the timeout of 1 s" in answer
        assert httpx.post(f"http://127.0.0.1:{port}/predict", content=body,
                          headers={"Content-Type": content_type}).status_code == 200  # the slot is free again


def test_health_answers_at_once_while_the_model_runs(predictor):
    with running(app_for(SlowPredictor(predictor, delay=1.5))) as port:
        url = f"http://127.0.0.1:{port}"
        predicting = threading.Thread(target=httpx.post, args=(f"{url}/predict",),
                                      kwargs={"files": {"file": ("ok.png", png(photo()), "image/png")}, "timeout": 30})
        predicting.start()
        time.sleep(0.3)  # the request is in the model now
        timings = []
        with httpx.Client() as client:
            for _ in range(5):
                started = time.perf_counter()
                assert client.get(f"{url}/health").status_code == 200
                timings.append(time.perf_counter() - started)
        assert predicting.is_alive()  # all five answered while the prediction was still running
        predicting.join()
        assert sorted(timings)[2] < 0.1, timings


def test_concurrent_requests_are_predicted_in_batches_with_the_same_detections(predictor):
    images = [photo((180 + 20 * i, 260 - 10 * i), index=i % 4) for i in range(6)]
    with running(app_for(predictor, max_batch=4, max_wait_ms=400)) as port:
        url = f"http://127.0.0.1:{port}"

        def ask(index):
            files = {"file": (f"{index}.png", png(images[index]), "image/png")}
            return httpx.post(f"{url}/predict", files=files, timeout=60).json()

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            replies = list(pool.map(ask, range(6)))
        metrics = httpx.get(f"{url}/metrics").text
    batches = float(re.search(r"^detector_batch_size_count (\S+)$", metrics, re.M).group(1))
    assert batches < 6  # at least two requests shared a batch
    assert 'detector_batch_size_bucket{le="1.0"} 6.0' not in metrics
    for image, reply in zip(images, replies):
        expected = predictor.predict([image])[0]
        assert len(reply["detections"]) == len(expected["scores"])
        for got, score in zip(reply["detections"], expected["scores"]):
            assert got["score"] == pytest.approx(float(score), abs=1e-3)


def test_an_image_that_breaks_the_model_fails_alone_not_its_batch(predictor):
    """A predictor error is a bug (500), but only for the request that caused it: the batch is
    predicted again image by image, and the other requests get their detections."""
    import asyncio

    from detector.serving.batching import MicroBatcher

    class BreaksOnHeight77(SlowPredictor):
        def predict(self, images, batch_size=4):
            if any(image.shape[0] == 77 for image in images):
                raise RuntimeError("the model broke")
            return self.predictor.predict(images, batch_size=batch_size)

    images = [photo((120, 160)), photo((77, 160), index=1), photo((130, 170), index=2)]
    batcher = MicroBatcher(BreaksOnHeight77(predictor, 0), max_batch=4, max_wait_ms=300, workers=1)

    async def ask_all():
        return await asyncio.gather(*(batcher.predict(image) for image in images), return_exceptions=True)

    try:
        first, broken, third = asyncio.run(ask_all())
    finally:
        batcher.close()
    assert isinstance(broken, RuntimeError) and str(broken) == "the model broke"
    for image, result in ((images[0], first), (images[2], third)):
        assert np.allclose(result["scores"], predictor.predict([image])[0]["scores"], atol=1e-4)
