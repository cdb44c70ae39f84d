"""`detector serve`: load the weights once, warn about an open bind, run uvicorn around the app.
The server itself lives in detector/serving/, one file per concern: settings (every limit),
upload (streaming form + header check), access (token, bind warning), batching (inference off
the event loop), metrics (Prometheus), app (routes, queue, errors)."""
from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from detector.dependencies import require
from detector.serving.access import exposure_warning
from detector.serving.app import create_app
from detector.serving.settings import MAX_PIXELS, MAX_UPLOAD_BYTES, ServeSettings
from detector.serving.upload import decode_upload

__all__ = ["MAX_PIXELS", "MAX_UPLOAD_BYTES", "ServeSettings", "create_app", "decode_upload", "run_server"]


def share_cores(workers: int) -> None:
    """A pool sized to the cores: `workers` inference threads share them, each running PyTorch on
    cores / workers threads, so that several concurrent batches do not oversubscribe the CPU.
    (An exported model's runtime keeps the threads its session was made with.)"""
    import torch

    if workers > 1:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))


def run_server(weights: str | Path, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
               settings: ServeSettings | None = None, overrides: Sequence[str] = (), backend: str | None = None,
               precision: str | None = None, slicing: dict | None = None) -> None:
    """Load `weights` once (test-time `overrides`, the `backend` and `precision` of an exported
    file, `slicing` changes, as every command: detector/inference/loading.py) and serve until
    interrupted."""
    uvicorn = require("uvicorn", "serve", "detector serve")
    from detector.inference import load_predictor

    settings = settings or ServeSettings()
    warning = exposure_warning(host, port, settings.token)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    predictor = load_predictor(weights, device, overrides=overrides, backend=backend, precision=precision,
                               slicing=slicing)
    share_cores(settings.workers)
    app = create_app(predictor, Path(weights).name, settings=settings)
    auth = "bearer token required" if settings.token else "no token"
    print(f"serving {weights} on http://{host}:{port} (POST /predict, GET /health, GET /metrics; {auth}; "
          f"batches of up to {settings.max_batch}, queue {settings.queue_size})", flush=True)
    # Keep-alive short: an idle connection holds a socket and nothing else of value. Connections
    # beyond limit_concurrency get uvicorn's own (plain-text) 503, before any app code runs.
    uvicorn.run(app, host=host, port=port, log_level=os.environ.get("DETECTOR_LOG_LEVEL", "warning"),
                timeout_keep_alive=5, server_header=False, limit_concurrency=connection_limit(settings))


def connection_limit(settings: ServeSettings) -> int:
    """Open connections and tasks uvicorn allows: room for every admitted request, the clients
    waiting on keep-alive and /health probes, with a bound a flood of idle sockets cannot pass."""
    return 4 * settings.queue_size + 64
