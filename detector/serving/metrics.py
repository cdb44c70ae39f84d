"""Prometheus metrics of one app (GET /metrics): requests and errors by status, request latency,
queue depth, batch sizes and inference time. Each app has its own CollectorRegistry, so tests
and programs that create several apps do not collide in the global one."""
from __future__ import annotations

import time

ROUTES = ("/", "/health", "/predict", "/metrics")  # other paths are counted as "other": bounded label values
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServeMetrics:
    def __init__(self, max_batch: int) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = CollectorRegistry()
        self.requests = Counter("detector_requests", "HTTP requests answered, by path and status",
                                ["path", "status"], registry=self.registry)
        self.errors = Counter("detector_errors", "HTTP error answers (status >= 400), by status",
                              ["status"], registry=self.registry)
        self.latency = Histogram("detector_request_seconds", "time from the request to its answer, by path",
                                 ["path"], buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue_depth = Gauge("detector_queue_depth", "requests admitted to /predict and not yet answered",
                                 registry=self.registry)
        self.batch_size = Histogram("detector_batch_size", "images per inference batch",
                                    buckets=tuple(range(1, max_batch + 1)), registry=self.registry)
        self.inference = Histogram("detector_inference_seconds", "time of one batched predictor call",
                                   buckets=LATENCY_BUCKETS, registry=self.registry)

    def observe_request(self, path: str, status: int, started: float) -> None:
        path = path if path in ROUTES else "other"
        self.requests.labels(path, str(status)).inc()
        if status >= 400:
            self.errors.labels(str(status)).inc()
        self.latency.labels(path).observe(time.perf_counter() - started)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference.observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Pure ASGI middleware: the status and latency of every HTTP answer, errors included."""

    def __init__(self, app, metrics: ServeMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), 500

        async def send_and_note(message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_note)
        finally:
            self.metrics.observe_request(scope["path"], status, started)
