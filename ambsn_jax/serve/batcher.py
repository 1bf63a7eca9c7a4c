"""A bounded queue of denoising jobs in front of one worker thread that owns the network.

Concurrent requests of one image shape (up to a tile) are run as one batch, its items spread
over the devices; a batch has a power-of-two size so that each shape compiles only a few
programs. A job whose caller gave up (time limit, disconnect) is cancelled: skipped if still
queued, its result dropped if already running.
"""

from __future__ import annotations

import collections
import dataclasses
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import numpy as np

from ambsn_jax.api import ImageDenoiser


class QueueFull(Exception):
    """The queue holds its maximum of jobs; the caller should retry later."""


@dataclasses.dataclass(eq=False)
class Job:
    samples: np.ndarray
    seed: int
    index: int
    deadline: float  # time.monotonic() after which nobody waits for the result
    future: Future = dataclasses.field(default_factory=Future)

    def group(self) -> tuple:
        """Jobs with the same group can share a batch."""
        return (self.samples.shape, self.samples.dtype)


class Batcher:
    """`submit` jobs from any thread; one worker thread runs them through `model` in batches of
    up to `max_batch` same-shape images (1: never batch). `on_batch(size, seconds)` is told of
    each batch run."""

    def __init__(self, model: ImageDenoiser, max_queue: int, max_batch: int, on_batch: Callable[[int, float], None] = lambda n, s: None):
        self.model = model
        self.max_queue = max_queue
        self.max_batch = max_batch
        self._on_batch = on_batch
        self._jobs: collections.deque[Job] = collections.deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread = threading.Thread(target=self._serve, name="ambsn-denoiser", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            for job in self._jobs:
                job.future.cancel()
            self._jobs.clear()
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join()

    def depth(self) -> int:
        """Jobs waiting (not given up on), not counting the batch being run."""
        with self._cond:
            return sum(not job.future.cancelled() for job in self._jobs)

    def submit(self, samples: np.ndarray, seed: int, index: int, timeout: float) -> Future:
        job = Job(samples, seed, index, time.monotonic() + timeout)
        with self._cond:
            if self._stopping:
                raise RuntimeError("the batcher is stopped")
            self._drop_dead()  # a job its caller gave up on holds no place
            if len(self._jobs) >= self.max_queue:
                raise QueueFull
            self._jobs.append(job)
            self._cond.notify()
        return job.future

    def _batchable(self, job: Job) -> bool:
        tile = self.model.tiling.tile
        return self.max_batch > 1 and job.samples.shape[0] <= tile and job.samples.shape[1] <= tile

    def _take(self) -> list[Job] | None:
        """The next batch: the oldest live job and queued live jobs of its group, a power of two
        of them at most `max_batch`; None once stopping."""
        with self._cond:
            while True:
                self._drop_dead()
                if self._stopping:
                    return None
                if self._jobs:
                    break
                self._cond.wait()
            first = self._jobs.popleft()
            if not self._batchable(first):
                return [first]
            mates = [j for j in self._jobs if j.group() == first.group()]
            size = 1 << (min(len(mates) + 1, self.max_batch).bit_length() - 1)
            for job in mates[: size - 1]:
                self._jobs.remove(job)
            return [first, *mates[: size - 1]]

    def _drop_dead(self) -> None:
        """Forgets queued jobs that were cancelled or are past their deadline."""
        now = time.monotonic()
        for job in [j for j in self._jobs if j.future.cancelled() or j.deadline < now]:
            self._jobs.remove(job)
            job.future.cancel()

    def _serve(self) -> None:
        while (jobs := self._take()) is not None:
            live = [j for j in jobs if j.future.set_running_or_notify_cancel()]
            if not live:
                continue
            start = time.perf_counter()
            try:
                outs = self.model.batch([j.samples for j in live], [j.seed for j in live], [j.index for j in live])
            except Exception as e:  # handed to the waiting requests, which answer 500
                for job in live:
                    job.future.set_exception(e)
                continue
            self._on_batch(len(live), time.perf_counter() - start)
            for job, out in zip(live, outs):
                job.future.set_result(out)
