"""The FastAPI application: routes, the admission queue, timeouts, and one error shape.

  GET  /          a page to drop an image on and see the boxes drawn
  GET  /health    {"status": "ok", "weights", "classes"}; never waits for the model
  GET  /metrics   Prometheus text (metrics.py)
  POST /predict   multipart field "file" = one image -> {"file", "width", "height", "detections":
                  [{"bbox_xyxy" (pixels), "score", "category_id", "name"}]}

Every error is JSON {"error": "..."}: 400 a malformed form, empty upload, second file or bad
file name; 401 no or wrong token; 404/405 an unknown path or method; 408 an upload slower than
the timeout; 413 more bytes or pixels than the limits; 415 not an image or truncated; 422 an
image too thin for the model's resize (e.g. 1 x 2000 px); 503 (with Retry-After) the queue is
full or the answer did not come within the timeout; 500 a bug.

The event loop only moves bytes: the header check and decoding run in a thread pool, inference
in the micro-batcher's workers (batching.py).
"""
# No `from __future__ import annotations`: FastAPI reads the endpoint's annotations at run time.

import asyncio
import contextlib
import dataclasses
import logging
from concurrent.futures import ThreadPoolExecutor

from detector.dependencies import require
from detector.errors import DegenerateImageError, UploadError
from detector.serving.access import check_bearer
from detector.serving.batching import MicroBatcher
from detector.serving.metrics import MetricsMiddleware, ServeMetrics
from detector.serving.page import PAGE
from detector.serving.settings import ServeSettings
from detector.serving.upload import decode_upload, read_upload

RETRY_AFTER_S = 1
log = logging.getLogger("detector.serve")


def create_app(predictor, weights_name: str = "", max_pixels: int | None = None,
               settings: ServeSettings | None = None):
    """The FastAPI application around `predictor` (anything with `predict(images, batch_size)`,
    `check_size`, `category_names`, `category_ids`); `max_pixels` overrides `settings.max_pixels`."""
    fastapi = require("fastapi", "serve", "detector serve")
    require("python_multipart", "serve", "detector serve")
    require("prometheus_client", "serve", "detector serve")
    from fastapi import Request
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect

    from detector.inference.categories import to_json

    settings = settings or ServeSettings()
    if max_pixels is not None:
        settings = dataclasses.replace(settings, max_pixels=max_pixels)
    metrics = ServeMetrics(settings.max_batch)
    batcher = MicroBatcher(predictor, settings.max_batch, settings.max_wait_ms, settings.workers, metrics)
    decoder = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="detector-decode")
    admitted = 0  # requests in /predict now; only the event loop's thread changes it

    @contextlib.asynccontextmanager
    async def lifespan(app):
        yield
        batcher.close()
        decoder.shutdown(wait=False, cancel_futures=True)

    app = fastapi.FastAPI(title="detector", description="Faster R-CNN detections over HTTP", lifespan=lifespan,
                          docs_url="/docs" if settings.docs else None, redoc_url="/redoc" if settings.docs else None,
                          openapi_url="/openapi.json" if settings.docs else None)
    app.state.settings, app.state.metrics, app.state.batcher = settings, metrics, batcher

    def error(status: int, message: str, headers: dict | None = None):
        return JSONResponse({"error": message}, status_code=status, headers=headers)

    @app.exception_handler(HTTPException)
    async def http_error(request, exception):  # 404, 405 and the like, in our shape
        message = f"{request.method} {request.url.path}: {str(exception.detail).lower()}"
        if exception.status_code in (404, 405):
            message += " (the API: POST /predict, GET /health, GET /metrics, GET /)"
        return error(exception.status_code, message, getattr(exception, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def validation_error(request, exception):
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg')}" for e in exception.errors())
        return error(422, f"invalid request: {problems}")

    @app.exception_handler(Exception)
    async def internal_error(request, exception):  # a bug: the traceback goes to the log, not to the client
        log.exception("internal error on %s %s", request.method, request.url.path)
        return error(500, f"internal error ({type(exception).__name__}); see the server's log")

    app.add_middleware(MetricsMiddleware, metrics=metrics)
    if settings.cors_origins:
        from fastapi.middleware.cors import CORSMiddleware

        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["Authorization", "Content-Type"])

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> str:
        return PAGE

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok", "weights": weights_name, "classes": list(predictor.category_names)}

    @app.get("/metrics", include_in_schema=False)
    async def prometheus(request: Request):
        try:
            check_bearer(request.headers.get("authorization"), settings.token)
        except UploadError as refused:
            return error(refused.status, str(refused), {"WWW-Authenticate": "Bearer"})
        body, content_type = metrics.exposition()
        return Response(body, media_type=content_type)

    def decode_and_check(content: bytes, name: str):
        image = decode_upload(content, name, settings.max_pixels)
        predictor.check_size(image.shape[0], image.shape[1], name)
        return image

    @app.post("/predict")
    async def predict(request: Request):
        nonlocal admitted
        try:
            check_bearer(request.headers.get("authorization"), settings.token)
        except UploadError as refused:
            return error(refused.status, str(refused), {"WWW-Authenticate": "Bearer"})
        if admitted >= settings.queue_size:  # refused before reading a byte of the body
            return error(503, f"busy: {admitted} requests in progress, the limit is {settings.queue_size}; "
                              f"retry after {RETRY_AFTER_S} s", {"Retry-After": str(RETRY_AFTER_S)})
        admitted += 1
        metrics.queue_depth.inc()
        phase = ["upload"]

        async def answer():
            upload = await read_upload(request, settings.max_upload_bytes)
            phase[0] = "decode"
            image = await asyncio.get_running_loop().run_in_executor(
                decoder, decode_and_check, upload.content, upload.filename)
            upload.content = b""  # the decoded pixels are all that is needed now
            phase[0] = "inference"
            detection = await batcher.predict(image)
            return {"file": upload.filename, "width": int(image.shape[1]), "height": int(image.shape[0]),
                    "detections": to_json(detection, predictor)}  # as predictions.json

        try:
            return await asyncio.wait_for(answer(), settings.timeout_s)
        except asyncio.TimeoutError:
            if phase[0] == "upload":
                return error(408, f"the upload took longer than the timeout of {settings.timeout_s:g} s")
            return error(503, f"no answer within the timeout of {settings.timeout_s:g} s (still at the {phase[0]} "
                              "step): the server is busy, retry later",
                         {"Retry-After": str(RETRY_AFTER_S)})
        except UploadError as refused:
            return error(refused.status, str(refused))
        except ClientDisconnect:  # nobody reads this answer; counted as a 400 in the metrics
            return error(400, "the client disconnected during the upload")
        except DegenerateImageError as degenerate:
            return error(422, str(degenerate))
        finally:
            admitted -= 1
            metrics.queue_depth.dec()

    return app
