"""Grids of windows over an axis, and fixed-size batches over a list: shared by patch cutting,
tiling and every batched evaluation. NumPy only, so that command lines read `Tiling`'s
defaults without importing JAX."""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Tiling:
    """How images larger than a tile are cut; the defaults are the command line's."""

    tile: int = 512  # tile side; images up to it on both sides go through whole, as the release runs
    # Pixels neighbouring tiles share at least, and cross-fade over: the least that leaves no
    # seam (bench/seams.py: at 32 the tiled-minus-whole difference is no larger along the tile
    # edges than between them; at 16 it is 1.4x larger).
    overlap: int = 32
    batch: int = 4  # tiles per call


def window_starts(length: int, size: int, stride: int) -> list[int]:
    """Origins of `size`-long windows covering [0, length): every `stride`, the last one flush
    with the far border. One window at 0 when `length <= size`."""
    if length <= size:
        return [0]
    return [*range(0, length - size, stride), length - size]


def even_windows(length: int, most: int, overlap: int, multiple: int = 16) -> tuple[int, list[int]]:
    """(size, origins) of the fewest windows of at most `most` pixels that cover [0, length)
    with neighbours sharing at least `overlap`: all of one size, just large enough, spread
    evenly. The size is rounded up to `multiple` (within `most`), so that images of nearby
    sizes share their compiled programs. One window of `length` when it fits in `most`.
    """
    if length <= most:
        return length, [0]
    count = _ceil_div(length - overlap, most - overlap)
    size = min(most, _ceil_div(_ceil_div(length + (count - 1) * overlap, count), multiple) * multiple)
    return size, [round(i * (length - size) / (count - 1)) for i in range(count)]


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def padded_batches(count: int, batch: int) -> list[tuple[np.ndarray, int]]:
    """(indices, valid) per batch of `batch` items out of `count`, in order.

    The last batch is topped up by repeating its last index, so that every call has one
    compiled shape; only its first `valid` results are real.
    """
    out = []
    for start in range(0, count, batch):
        valid = min(batch, count - start)
        out.append((np.minimum(np.arange(start, start + batch), start + valid - 1), valid))
    return out


def even_batches(count: int, most: int, multiple: int = 1) -> list[tuple[np.ndarray, int]]:
    """`padded_batches` of the fewest calls of at most `most` items (a multiple of `multiple`),
    all of one size, just large enough: fewer than `multiple` padded items a call on average, where
    calls of `most` pad up to `most - 1` in the last."""
    if count == 0:
        return []
    calls = _ceil_div(count, most)
    return padded_batches(count, multiple * _ceil_div(count, calls * multiple))


def pad_to_min_side(image: np.ndarray, min_side: int, axes: tuple[int, int] = (0, 1)) -> np.ndarray:
    """Edge-pad `image` at the bottom / right so that both `axes` are at least `min_side` long.

    The one policy for inputs smaller than the network needs: pad, denoise, crop back.
    """
    pad = [(0, 0)] * image.ndim
    for axis in axes:
        pad[axis] = (0, max(0, min_side - image.shape[axis]))
    return np.pad(image, pad, mode="edge") if any(p for _, p in pad) else image
