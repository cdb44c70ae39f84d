"""`detector predict --ray`: the sources of a prediction run through a Ray Data pipeline, into
JSON Lines shards that a rerun resumes (inference/jsonl.py).

  driver     lists the sources lazily, leaves out those the manifest has done, writes shards
  CPU tasks  read and decode each image (`records.decode`), at most 1 per worker in flight
  actors     `--workers` of them, each loading the predictor once from `predictor_spec` (the
             same keyword arguments local predict gives `load_predictor`) and predicting
             batches of `--batch-size` (`records.predict_records`)

Results come back to the driver as they finish (Ray Data streams them, with backpressure), so
memory holds a few batches, not the run. Ray is the optional extra `detector[ray]`.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.dependencies import require
from detector.errors import DetectorError
from detector.inference.jsonl import SHARD_SIZE, ShardStore, merge_to_coco
from detector.inference.records import decode, predict_records
from detector.inference.skipping import Skipped, exit_code
from detector.inference.sources import check_source_lists, find_sources

CONNECT_TIMEOUT_S = 10.0  # an address that does not answer as a gRPC server within this is refused
DEFAULT_PORT = 6379  # the port of a Ray head node's GCS
# Decoding a photo costs ~5 ms of CPU, predicting it 15 ms (Lite0 on an H200) to 200+ ms (a CPU
# core): one decoding task per worker keeps up, and each more is one more process importing torch.
DECODE_TASKS_PER_WORKER = 1


@dataclass
class RayOptions:
    address: str | None = None  # None: RAY_ADDRESS if set, else a Ray runtime started on this machine
    workers: int = 1
    batch_size: int = 4
    shard_size: int = SHARD_SIZE
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0
    merge: bool = False


@dataclass
class RayRun:
    """Counts over the whole output folder (earlier, resumed runs included)."""

    predicted: int
    skipped: int
    resumed: int  # files an earlier run had done
    merged: Path | None = None

    @property
    def exit_code(self) -> int:
        return exit_code(self.predicted, self.skipped)


def predict_on_ray(spec: dict, patterns: Sequence[str], out: str | Path, options: RayOptions,
                   log: Callable[[str], None] = print,
                   warn: Callable[[str], None] = lambda message: print(message, file=sys.stderr)) -> RayRun:
    """Predict every source of `patterns` with `load_predictor(**spec)` on Ray, into `out`."""
    check_options(options)
    ray = require_ray()
    check_source_lists(patterns)
    predictor = check_predictor(spec)  # broken weights or settings: one line here, not a crash in every actor
    if hasattr(predictor, "settings"):  # sliced (inference/slicing.py)
        log(predictor.settings.describe())
    if hasattr(predictor, "tta"):  # inference/tta.py
        log(predictor.tta.describe())
    categories = list(zip(predictor.category_ids, predictor.category_names))
    del predictor
    started_ray = connect(ray, options.address)  # before anything is written: a wrong address leaves no folder
    try:
        store = ShardStore(out, options.shard_size)
        store.open(spec)
        resumed = len(store.done)
        todo = []
        for source in find_sources(patterns):
            name = source.source if isinstance(source, Skipped) else str(source)
            if name in store.done:
                continue
            if isinstance(source, Skipped):
                store.add(name, source.reason, json.dumps({"file": name, "skipped": source.reason}))
                warn(f"skipped {source}")
            else:
                todo.append(name)
        if resumed:
            log(f"resuming: {resumed} sources done in {store.manifest}, {len(todo)} to predict")
        try:
            if todo:
                stream_predictions(ray, spec, todo, options, store, log, warn)
        finally:
            store.finish()  # what finished is kept, on Ctrl-C too
        merged = merge_to_coco(out, categories) if options.merge else None
        return RayRun(store.predicted, len(store.skipped), resumed, merged)
    finally:
        if started_ray:
            ray.shutdown()


def check_options(options: RayOptions) -> None:
    for name, value in (("--workers", options.workers), ("--batch-size", options.batch_size),
                        ("--shard-size", options.shard_size)):
        if value < 1:
            raise DetectorError(f"{name} must be >= 1, got {value}")
    if options.cpus_per_worker <= 0 or options.gpus_per_worker < 0:
        raise DetectorError("--cpus-per-worker must be > 0 and --gpus-per-worker >= 0")


def require_ray():
    """The `ray` module with Ray Data, or one line naming the extra to install."""
    ray = require("ray", "ray", "detector predict --ray")
    require("ray.data", "ray", "detector predict --ray (Ray Data)")  # `pip install ray` alone lacks pyarrow
    return ray


def check_predictor(spec: dict):
    """The predictor of `spec`, loaded once here on the CPU, so that weights or settings that
    cannot work stop the run in one line before any actor starts."""
    from detector.inference import load_predictor

    return load_predictor(**{**spec, "device": "cpu", "compile": False})


def connect(ray, address: str | None) -> bool:
    """Join the Ray cluster at `address` (`auto`, `HOST:PORT`, `ray://HOST:PORT`), or start a
    runtime on this machine when there is none; True when this call started Ray. An address
    that does not take a TCP connection within CONNECT_TIMEOUT_S is refused in one line
    (ray.init itself would retry for minutes)."""
    if address not in (None, "auto", "local"):
        check_reachable(address)
    if ray.is_initialized():  # a caller (a notebook, the tests) already joined a cluster
        return False
    try:
        ray.init(address=address, logging_level=logging.WARNING, include_dashboard=False,
                 log_to_driver=True)
    except (ConnectionError, RuntimeError, ValueError) as error:
        message = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise DetectorError(f"--ray {address}: cannot join the Ray cluster ({message})") from None
    return True


# A gRPC server (Ray's GCS, or its client server behind ray://) answers the HTTP/2 preface with
# a SETTINGS frame; a port that takes connections but is not Ray would make ray.init wait for minutes.
HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + bytes([0, 0, 0, 4, 0, 0, 0, 0, 0])
HTTP2_SETTINGS = 4


def check_reachable(address: str) -> None:
    """A one-line DetectorError unless `address` answers as a gRPC server within CONNECT_TIMEOUT_S."""
    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":") if ":" in host_port else (host_port, "", str(DEFAULT_PORT))
    try:
        with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S) as connection:
            if os.environ.get("RAY_USE_TLS", "0") in ("0", ""):  # over TLS the first bytes are a handshake
                connection.sendall(HTTP2_PREFACE)
                frame = connection.recv(9)
                if len(frame) < 9 or frame[3] != HTTP2_SETTINGS:
                    raise DetectorError(f"--ray {address}: the port answers, but not as a Ray cluster (no gRPC); "
                                        "is it the head node's GCS port (6379 by default)?")
    except ValueError:
        raise DetectorError(f"--ray {address}: not an address (HOST:PORT, ray://HOST:PORT or auto)") from None
    except OSError as error:
        why = "no answer" if isinstance(error, TimeoutError) else (error.strerror or str(error)).lower()
        raise DetectorError(f"--ray {address}: cannot reach the Ray cluster within {CONNECT_TIMEOUT_S:g} s "
                            f"({why})") from None


def stream_predictions(ray, spec: dict, files: list[str], options: RayOptions, store: ShardStore,
                       log: Callable[[str], None], warn: Callable[[str], None]) -> None:
    """Run the pipeline over `files`, adding each record to `store` as it comes back."""
    from ray.data import ActorPoolStrategy, DataContext, TaskPoolStrategy

    DataContext.get_current().enable_progress_bars = sys.stderr.isatty()
    logging.getLogger("ray.data").setLevel(logging.WARNING)  # its plan and timings on every run
    dataset = ray.data.from_items([{"file": file} for file in files],
                                  override_num_blocks=block_count(len(files), options))
    # Decoding claims no CPU of its own (it is a few % of a prediction) and is capped instead, so
    # the actors keep their cores; its different resources also keep Ray from fusing it into them.
    dataset = dataset.map_batches(decode_batch, batch_size=None, batch_format="numpy", num_cpus=0,
                                  compute=TaskPoolStrategy(size=DECODE_TASKS_PER_WORKER * options.workers))
    actor = type("Predicting", (PredictingActor,), {"spec": spec, "threads": max(1, int(options.cpus_per_worker))})
    dataset = dataset.map_batches(actor, batch_size=options.batch_size, batch_format="numpy",
                                  compute=ActorPoolStrategy(size=options.workers),
                                  num_cpus=options.cpus_per_worker, num_gpus=options.gpus_per_worker)
    started, count, shards = time.monotonic(), 0, store.next_shard
    with warnings.catch_warnings():  # Ray's advice to cut more blocks when a run has few: cut on purpose
        warnings.filterwarnings("ignore", message="The (maximum|minimum) number of concurrent", category=UserWarning)
        for batch in dataset.iter_batches(batch_size=None, batch_format="numpy"):
            for file, reason, line in zip(batch["file"], batch["skipped"], batch["line"]):
                store.add(str(file), str(reason) or None, str(line))
                if reason:
                    warn(f"skipped {file}: {reason}")
                count += 1
            if store.next_shard != shards:
                shards = store.next_shard
                log(f"{count} of {len(files)} images done ({count / (time.monotonic() - started):.1f} images/s)")


def block_count(files: int, options: RayOptions) -> int:
    """How many blocks the file list is cut into: a batch each while that keeps every decode
    task busy, else blocks of ~256 files (a million files: ~4000 blocks, not 250,000 tasks)."""
    per_batch = -(-files // options.batch_size)
    return max(1, min(per_batch, max(8 * DECODE_TASKS_PER_WORKER * options.workers, -(-files // 256))))


def decode_batch(batch: dict) -> dict:
    """CPU task: each file's RGB image (empty when it cannot be read) and why not."""
    images, reasons = [], []
    for file in batch["file"]:
        image = decode(str(file))
        images.append(np.zeros((0, 0, 3), np.uint8) if isinstance(image, Skipped) else image)
        reasons.append(image.reason if isinstance(image, Skipped) else "")
    return {"file": batch["file"], "image": images, "skipped": reasons}


class PredictingActor:
    """One actor of the pool: loads `load_predictor(**spec)` once, then predicts batches.
    `spec` and `threads` are class attributes of a subclass made per run (stream_predictions),
    so the actor's arguments travel with its class rather than through the object store."""

    spec: dict = {}
    threads: int = 1

    def __init__(self) -> None:
        import torch

        from detector.inference import load_predictor

        torch.set_num_threads(self.threads)  # the cores Ray gave this actor, not every core of the node
        self.predictor = load_predictor(**self.spec)

    def __call__(self, batch: dict) -> dict:
        files = [str(file) for file in batch["file"]]
        # Ray hands over read-only views of its object store; torch wants arrays it may write.
        images = [Skipped(file, str(reason)) if reason else np.array(image)
                  for file, image, reason in zip(files, batch["image"], batch["skipped"])]
        records = predict_records(self.predictor, files, images, batch_size=len(files))
        return {"file": files, "skipped": [record.get("skipped", "") for record in records],
                "line": [json.dumps(record) for record in records]}


def looks_like_address(token: str) -> bool:
    """Whether the token after a bare `--ray` is its ADDRESS rather than the first source:
    `auto`, `local`, `ray://...`, or HOST:PORT that names no file."""
    if token in ("auto", "local") or "://" in token:
        return True
    host, _, port = token.rpartition(":")
    return bool(host) and port.isdigit() and not Path(token).exists()
