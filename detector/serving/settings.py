"""Every limit and switch of `detector serve`, in one place, with the default and why.
Plain Python (no FastAPI import), so the command line can read the defaults cheaply."""
from __future__ import annotations

import os
from dataclasses import dataclass

MAX_UPLOAD_BYTES = 50 * 2**20
MAX_PIXELS = 40_000_000
FORM_OVERHEAD_BYTES = 16 * 2**10  # multipart boundaries, part headers and small fields around the one file
TOKEN_VARIABLE = "DETECTOR_SERVE_TOKEN"
OPTIONS = {"max_upload_bytes": "--max-upload-bytes", "max_pixels": "--max-pixels", "queue_size": "--queue",
           "max_batch": "--max-batch", "workers": "--workers", "timeout_s": "--timeout", "max_wait_ms": "--max-wait-ms"}


@dataclass(frozen=True)
class ServeSettings:
    """Limits (413 above them), the queue (503 when full), access (401 without the token)."""

    max_upload_bytes: int = MAX_UPLOAD_BYTES  # one image's file; Content-Length is checked first
    max_pixels: int = MAX_PIXELS  # width x height from the header, before any decoder allocates
    queue_size: int = 32  # requests admitted at once (reading, decoding, waiting, predicting); bounds memory
    timeout_s: float = 30.0  # one request, from its first byte to its answer (slow uploads: 408, slow queue: 503)
    max_batch: int = 4  # concurrent requests predicted together in one call
    max_wait_ms: float = 10.0  # how long the first request of a batch waits for company
    workers: int = 1  # inference threads; one batch already uses every core through the model's own threads
    decode_threads: int = max(1, os.cpu_count() or 1)  # header checks and decoding, off the event loop
    token: str | None = None  # bearer token for /predict and /metrics
    cors_origins: tuple[str, ...] = ()  # browser origins allowed to call the API; none by default
    docs: bool = False  # /docs, /redoc and /openapi.json

    def __post_init__(self) -> None:
        from detector.errors import InputError

        for key in ("max_upload_bytes", "max_pixels", "queue_size", "max_batch", "workers", "decode_threads"):
            if getattr(self, key) < 1:
                raise InputError(f"{OPTIONS.get(key, key)} must be >= 1, got {getattr(self, key)}")
        for key in ("timeout_s", "max_wait_ms"):
            if not getattr(self, key) >= 0:
                raise InputError(f"{OPTIONS[key]} must be >= 0, got {getattr(self, key)}")
        if self.token is not None and not self.token.strip():
            raise InputError(f"the token (--token or ${TOKEN_VARIABLE}) is empty")
