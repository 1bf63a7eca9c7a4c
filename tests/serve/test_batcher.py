"""The queue in front of the network: same-shape jobs share power-of-two batches, jobs given up
on are skipped, the queue's bound holds. A recording model stands in for the network here (the
pixels of a batch are `tests/test_api.py`'s and `test_app.py`'s business)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from ambsn_jax.ops.windows import Tiling
from ambsn_jax.serve.batcher import Batcher, QueueFull


class RecordingModel:
    """Adds 1 to each image; records each call's (shape, seeds, indices); waits for `gate`."""

    tiling = Tiling(tile=64)

    def __init__(self):
        self.calls: list[tuple[tuple, list[int], list[int]]] = []
        self.gate, self.entered = threading.Event(), threading.Event()

    def batch(self, images, seeds, indices):
        self.entered.set()
        assert self.gate.wait(timeout=30)
        self.calls.append((images[0].shape, list(seeds), list(indices)))
        return [image + 1 for image in images]


@pytest.fixture
def held():
    """A started batcher whose model is busy with a first job until the test opens the gate."""
    model = RecordingModel()
    batcher = Batcher(model, max_queue=16, max_batch=4)
    batcher.start()
    first = batcher.submit(np.zeros((8, 8), np.uint8), 99, 0, timeout=30)
    assert model.entered.wait(timeout=30)
    yield model, batcher, first
    model.gate.set()
    batcher.stop()


def test_same_shape_jobs_share_power_of_two_batches(held):
    model, batcher, first = held
    a = [batcher.submit(np.full((16, 16), i, np.uint8), i, 10 + i, timeout=30) for i in range(5)]
    b = [batcher.submit(np.full((16, 8), i, np.uint8), i, 0, timeout=30) for i in range(3)]
    big = batcher.submit(np.zeros((65, 16), np.uint8), 7, 0, timeout=30)  # above the tile: alone
    big2 = batcher.submit(np.zeros((65, 16), np.uint8), 8, 0, timeout=30)
    assert batcher.depth() == 10
    model.gate.set()
    for jobs in (a, b):
        assert [int(job.result(timeout=30)[0, 0]) for job in jobs] == [i + 1 for i in range(len(jobs))]
    big.result(timeout=30), big2.result(timeout=30), first.result(timeout=30)
    sizes = [(shape, len(seeds)) for shape, seeds, _ in model.calls]
    # Oldest job first, with as many of its shape as make a power of two; tiled sizes alone.
    assert sizes == [((8, 8), 1), ((16, 16), 4), ((16, 16), 1), ((16, 8), 2), ((16, 8), 1), ((65, 16), 1), ((65, 16), 1)]
    assert model.calls[1][1:] == ([0, 1, 2, 3], [10, 11, 12, 13])  # each job keeps its seed and index


def test_jobs_given_up_on_are_skipped_and_free_their_place(held):
    model, batcher, first = held
    expired = batcher.submit(np.zeros((4, 4), np.uint8), 1, 0, timeout=0.01)
    cancelled = batcher.submit(np.zeros((4, 4), np.uint8), 2, 0, timeout=30)
    assert cancelled.cancel()
    time.sleep(0.05)
    kept = batcher.submit(np.zeros((4, 4), np.uint8), 3, 0, timeout=30)
    assert batcher.depth() == 1  # the two dead jobs left the queue when this one came
    model.gate.set()
    kept.result(timeout=30), first.result(timeout=30)
    assert expired.cancelled() and [seeds for _, seeds, _ in model.calls] == [[99], [3]]


def test_the_queue_is_bounded_and_stopping_cancels_what_waits():
    model = RecordingModel()
    batcher = Batcher(model, max_queue=2, max_batch=1)  # not started: everything waits
    jobs = [batcher.submit(np.zeros((4, 4), np.uint8), i, 0, timeout=30) for i in range(2)]
    with pytest.raises(QueueFull):
        batcher.submit(np.zeros((4, 4), np.uint8), 2, 0, timeout=30)
    batcher.stop()
    assert all(job.cancelled() for job in jobs) and batcher.depth() == 0
    with pytest.raises(RuntimeError, match="stopped"):
        batcher.submit(np.zeros((4, 4), np.uint8), 3, 0, timeout=30)


def test_a_failing_batch_fails_its_jobs_and_the_worker_goes_on():
    class Flaky(RecordingModel):
        def batch(self, images, seeds, indices):
            if seeds == [0]:
                raise ValueError("boom")
            return super().batch(images, seeds, indices)

    model = Flaky()
    model.gate.set()
    batcher = Batcher(model, max_queue=4, max_batch=1)
    batcher.start()
    try:
        with pytest.raises(ValueError, match="boom"):
            batcher.submit(np.zeros((4, 4), np.uint8), 0, 0, timeout=30).result(timeout=30)
        assert int(batcher.submit(np.zeros((4, 4), np.uint8), 1, 0, timeout=30).result(timeout=30)[0, 0]) == 1
    finally:
        batcher.stop()
