"""Inference off the event loop: concurrent requests are gathered into batches (up to
`max_batch` images, waiting at most `max_wait_ms` after the first) and predicted by `workers`
threads, so the event loop keeps answering (/health, new uploads, 503s) while the model runs,
and 8 clients get more than 1 client's throughput from batched inference.

The queue is bounded by admission (app.py admits at most `queue_size` requests at once), so
it never holds more than that; a request that timed out while waiting is dropped from its
batch instead of being predicted for nobody.
"""
from __future__ import annotations

import asyncio
import queue
import threading
import time
from dataclasses import dataclass, field

import numpy as np


@dataclass
class Job:
    image: np.ndarray
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future
    abandoned: threading.Event = field(default_factory=threading.Event)


class MicroBatcher:
    """`await batcher.predict(image)` -> the predictor's detection for it, computed in a batch."""

    def __init__(self, predictor, max_batch: int, max_wait_ms: float, workers: int, metrics=None) -> None:
        self.predictor, self.max_batch, self.max_wait = predictor, max_batch, max_wait_ms / 1000
        self.workers, self.metrics = workers, metrics
        self.jobs: queue.Queue[Job | None] = queue.Queue()
        self.threads: list[threading.Thread] = []
        self.start_lock = threading.Lock()

    def start(self) -> None:
        with self.start_lock:
            if self.threads:
                return
            for index in range(self.workers):
                thread = threading.Thread(target=self.work, name=f"detector-inference-{index}", daemon=True)
                thread.start()
                self.threads.append(thread)

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join(timeout=30)
        self.threads = []

    async def predict(self, image: np.ndarray) -> dict:
        self.start()
        loop = asyncio.get_running_loop()
        job = Job(image, loop, loop.create_future())
        self.jobs.put(job)
        try:
            return await asyncio.shield(job.future)
        except asyncio.CancelledError:  # the request timed out or its client left: skip it if not started
            job.abandoned.set()
            raise

    def next_batch(self) -> list[Job] | None:
        """The next jobs to predict together: the first one waits for company up to max_wait."""
        first = self.jobs.get()
        if first is None:
            return None
        batch = [first]
        deadline = time.monotonic() + self.max_wait
        while len(batch) < self.max_batch:
            remaining = deadline - time.monotonic()
            try:
                job = self.jobs.get(timeout=remaining) if remaining > 0 else self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:  # closing: let another worker see it too
                self.jobs.put(None)
                break
            batch.append(job)
        return [job for job in batch if not job.abandoned.is_set()]

    def work(self) -> None:
        while (batch := self.next_batch()) is not None:
            if not batch:
                continue
            self.predict_batch(batch)

    def predict_batch(self, batch: list[Job]) -> None:
        started = time.perf_counter()
        try:
            results = self.predictor.predict([job.image for job in batch], batch_size=len(batch))
        except Exception as error:  # noqa: BLE001 - a bug: each waiting request answers 500
            if len(batch) > 1:  # one image's failure must not fail the others: each alone
                for job in batch:
                    self.predict_batch([job])
                return
            hand_back(batch[0], set_exception, error)
            return
        if self.metrics is not None:
            self.metrics.observe_batch(len(batch), time.perf_counter() - started)
        for job, result in zip(batch, results):
            hand_back(job, set_result, result)


def hand_back(job: Job, setter, value) -> None:
    """Resolve the job's future on its own event loop (gone when the app stopped meanwhile)."""
    try:
        job.loop.call_soon_threadsafe(setter, job.future, value)
    except RuntimeError:  # the loop is closed: nobody waits for this answer any more
        pass


def set_result(future: asyncio.Future, result) -> None:
    if not future.done():
        future.set_result(result)


def set_exception(future: asyncio.Future, error: BaseException) -> None:
    if not future.done():
        future.set_exception(error)
