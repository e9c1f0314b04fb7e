"""Dynamic micro-batching: one worker thread owns the model and decodes lines of many requests together.

Requests put all their lines on a bounded queue at once (or none: QueueFull); the worker takes
up to `max_batch_size` lines, waiting at most `max_wait_s` after the first for more, decodes
them in one call and hands every request its own predictions through a Future.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field

from ..decoding import Prediction

Decoder = Callable[[list[str]], Sequence[Prediction]]  # line image files -> predictions, in order


class QueueFull(Exception):
    """The queue cannot take the request's lines now (answered 429)."""


class Closed(Exception):
    """The service is shutting down and takes no new work (answered 503)."""


@dataclass
class _Job:
    future: Future[list[Prediction]]
    results: list[Prediction | None]
    left: int


@dataclass
class _Line:
    path: str
    job: _Job
    index: int  # position within its request


@dataclass
class BatchStats:
    """What the worker did, for /metrics (callbacks so this module needs no metrics library)."""

    on_batch: Callable[[int, float], None] = field(default=lambda size, seconds: None)


class Batcher:
    """The bounded queue of lines and the worker thread that decodes them."""

    def __init__(
        self,
        max_batch_size: int,
        max_wait_s: float,
        capacity: int,
        stats: BatchStats | None = None,
    ) -> None:
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.capacity = capacity
        self.stats = stats or BatchStats()
        self._queue: deque[_Line] = deque()
        self._cond = threading.Condition()
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self, decode: Decoder) -> None:
        self._thread = threading.Thread(
            target=self._run, args=(decode,), name="trocr-tune-batcher", daemon=True
        )
        self._thread.start()

    def depth(self) -> int:
        """Lines waiting (not yet taken by the worker)."""
        return len(self._queue)

    def submit(self, paths: Sequence[str]) -> Future[list[Prediction]]:
        """Queue one request's line images; the Future gives their predictions in the same order."""
        future: Future[list[Prediction]] = Future()
        if not paths:
            future.set_result([])
            return future
        job = _Job(future, [None] * len(paths), len(paths))
        with self._cond:
            if self._closing:
                raise Closed("the service is shutting down")
            if len(self._queue) + len(paths) > self.capacity:
                raise QueueFull(f"{len(self._queue)} lines queued, room for {self.capacity}")
            self._queue.extend(_Line(p, job, i) for i, p in enumerate(paths))
            self._cond.notify()
        return future

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work; the worker answers every queued line first, then ends."""
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)

    def _take(self) -> list[_Line] | None:
        with self._cond:
            while not self._queue:
                if self._closing:
                    return None
                self._cond.wait()
            deadline = time.monotonic() + self.max_wait_s
            while len(self._queue) < self.max_batch_size and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            return [self._queue.popleft() for _ in range(min(self.max_batch_size, len(self._queue)))]

    def _run(self, decode: Decoder) -> None:
        while (batch := self._take()) is not None:
            start = time.perf_counter()
            try:
                predictions = list(decode([line.path for line in batch]))
                if len(predictions) != len(batch):
                    raise RuntimeError(
                        f"decoder returned {len(predictions)} predictions for {len(batch)} lines"
                    )
            except Exception as exc:  # every request of the batch learns it; the worker goes on
                for job in {id(line.job): line.job for line in batch}.values():
                    if not job.future.done():
                        job.future.set_exception(exc)
                continue
            self.stats.on_batch(len(batch), time.perf_counter() - start)
            for line, prediction in zip(batch, predictions, strict=True):
                job = line.job
                job.results[line.index] = prediction
                job.left -= 1
                if job.left == 0 and not job.future.done():
                    job.future.set_result([p for p in job.results if p is not None])
