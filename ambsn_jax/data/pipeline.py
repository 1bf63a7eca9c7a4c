"""The training input pipeline in Grain: random crops of noisy images, as the release draws them.

Sample g of the run's global stream is a random `crop` x `crop` window of image
`shuffle_epoch(g // n)[g % n]`, turned as the release turns it (docs/release.md, "Data"). Everything random
is a function of (seed, g) alone, so the stream is the same for any number of worker
processes, devices or hosts, and an iterator restored from its state continues it exactly.
Host p of P takes its rows of every global batch; the global batch is the same for any P.

This module imports no JAX: Grain's worker processes are spawned and import it afresh.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path

import grain
import numpy as np
from absl import flags

from ambsn_jax.data.camera_noise import apply_camera_noise, sample_camera_params
from ambsn_jax.data.images import read_image
from ambsn_jax.errors import UserError


def augment(crop: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The release's augmentation of an (S, S, C) crop: rotation by k x 90 degrees, a
    horizontal flip, then one more 90-degree rotation with probability 0.25."""
    crop = np.rot90(crop, rng.integers(4))
    if rng.integers(2):
        crop = crop[:, ::-1]
    if rng.random() < 0.25:
        crop = np.rot90(crop)
    return crop


def _read_aligned(paths: tuple[str, ...]) -> np.ndarray:
    """The images at `paths` (a noisy image, and its teacher's target when distilling) stacked
    along the channels; they must be of one size."""
    images = [read_image(p)[0] for p in paths]
    for path, image in zip(paths[1:], images[1:]):
        if image.shape[:2] != images[0].shape[:2]:
            raise UserError(
                f"{path}: {image.shape[1]}x{image.shape[0]}, but {paths[0]} is "
                f"{images[0].shape[1]}x{images[0].shape[0]}; delete {path} so that it is made again"
            )
    return images[0] if len(images) == 1 else np.concatenate(images, axis=-1)


def random_crop(paths: tuple[str, ...], rng: np.random.Generator, size: int) -> np.ndarray:
    """A random augmented `size` x `size` window of the image at `paths[0]`: float32 RGB
    0..255; with more aligned images, the same window of each, stacked along the channels."""
    image = _read_aligned(paths)
    path = paths[0]
    height, width = image.shape[:2]
    if height < size or width < size:
        raise UserError(
            f"{path}: {width}x{height} is smaller than the {size}x{size} training crop; "
            "remove it or lower data.crop"
        )
    top = rng.integers(height - size + 1)
    left = rng.integers(width - size + 1)
    crop = augment(image[top : top + size, left : left + size], rng)
    return np.ascontiguousarray(crop)


# Pixels noised around a fresh-noise crop and cut off after: the demosaic reads two neighbours,
# so the crop's own pixels see the noise of an uncut image.
_NOISE_MARGIN = 2


def fresh_noise_crop(paths: tuple[str, ...], rng: np.random.Generator, size: int) -> np.ndarray:
    """A random augmented `size` x `size` window of the clean image at `paths[0]`, noised twice
    by one camera drawn from `rng` (`camera_noise`): two independent shots of the window,
    stacked along the channels (float32 0..255). Each sample's `rng` is its own, so the pairs
    never repeat across epochs and are the same on every run."""
    clean = random_crop(paths, rng, size + 2 * _NOISE_MARGIN).astype(np.uint8)
    camera = sample_camera_params(rng)
    inner = slice(_NOISE_MARGIN, _NOISE_MARGIN + size)
    shots = [apply_camera_noise(clean, camera, rng)[inner, inner] for _ in range(2)]
    return np.concatenate(shots, axis=-1).astype(np.float32)


def training_batches(
    paths: Sequence[str | Path | tuple[str | Path, ...]],
    *,
    crop: int,
    global_batch: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    fresh_noise: bool = False,
) -> grain.MapDataset:
    """This host's batches, (global_batch / process_count, crop, crop, 3) float32, endless;
    of tuples of aligned paths (distillation's noisy image and target), 3 channels per path.

    Each epoch visits every image once in a new order; the shuffle and every crop's random
    numbers are keyed by the sample's position in the global stream (Grain's `seed` and
    `random_map`), not by the host or worker that reads it. With `fresh_noise`, `paths` are
    clean images and each sample is `fresh_noise_crop`'s pair, its noise keyed alike.
    """
    if not paths:
        raise UserError("no training images")
    if global_batch % process_count:
        raise UserError(f"batch size {global_batch} does not divide by the {process_count} hosts")
    local_batch = global_batch // process_count
    samples = (
        grain.MapDataset.source([tuple(map(str, (p,) if isinstance(p, (str, Path)) else p)) for p in paths])
        .seed(seed)
        .shuffle()
        .repeat()  # each epoch reshuffled: the shuffle sees the index across epochs
        .random_map(partial(fresh_noise_crop if fresh_noise else random_crop, size=crop))
    )
    # Global batch b is local batches b*P .. b*P + P - 1, one per host.
    return samples.batch(local_batch, drop_remainder=True)[process_index::process_count]


def _exit_with_parent(worker_index: int, worker_count: int) -> None:
    """Grain worker init: end the worker when the training process dies.

    Grain's worker otherwise waits forever to hand over its next batch after the trainer is
    killed (kill -9, out of memory), holding a core and shared memory. It ignores SIGTERM and
    SIGINT, which schedulers and Ctrl-C send to the whole process group: the trainer decides
    when to stop (`ambsn_jax.train.preemption`) and still needs its workers until then.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, signal.SIG_IGN)
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def batch_iterator(batches: grain.MapDataset, workers: int, prefetch: int = 2) -> grain.DatasetIterator:
    """An iterator over `batches` read by `workers` processes (0: in this process).

    Its `get_state()` / `set_state()` (or Grain's Orbax handler) save and restore the position;
    a restored iterator needs the same number of workers.
    """
    # One thread per process: each element is a whole batch, and the processes give the
    # parallelism. Grain's default read buffer (500 batches) would hold gigabytes.
    it = batches.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=prefetch))
    if workers:
        # Grain 0.2.18 reads an absl flag when it starts workers and fails unless some
        # absl.app parsed the flags (google/grain#1355): their defaults are what we want.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        options = grain.MultiprocessingOptions(num_workers=workers, per_worker_buffer_size=prefetch)
        it = it.mp_prefetch(options, worker_init_fn=_exit_with_parent)
    return iter(it)
