"""Images of any size: cut into the fewest overlapping tiles of one size and cross-faded back."""

from __future__ import annotations

import jax
import numpy as np

from ambsn_jax.inference.denoiser import BoundDenoiser
from ambsn_jax.inference.keys import fold_in_each
from ambsn_jax.ops.windows import Tiling, even_batches, even_windows, pad_to_min_side


def _blend_window(tile: int, overlap: int) -> np.ndarray:
    """1-D weights rising linearly across the overlap, so neighbouring tiles cross-fade."""
    ramp = np.minimum(np.arange(1, tile + 1), np.arange(tile, 0, -1)).astype(np.float32)
    return np.minimum(ramp / max(overlap, 1), 1.0)


def denoise_image(
    denoiser: BoundDenoiser, image: np.ndarray, key: jax.Array, tiling: Tiling = Tiling()
) -> np.ndarray:
    """Denoise one (H, W, 3) image in 0..255 of any size; returns float32 (H, W, 3), unrounded.

    Images up to `tiling.tile` on both sides go through in one piece. Larger ones are cut
    into the fewest tiles of at most `tiling.tile` that overlap by at least `tiling.overlap`,
    all of one size and spread evenly (`even_windows`), and cross-faded: memory is bounded,
    the work is close to the image's own pixels, and no seam shows. Tile i (row-major)
    draws from `fold_in(key, i)`.
    """
    h, w = image.shape[:2]
    image = pad_to_min_side(image, denoiser.min_side())
    if image.shape[0] <= tiling.tile and image.shape[1] <= tiling.tile:
        return np.asarray(denoiser(image[None], key[None])[0])[:h, :w]
    ph, pw = image.shape[:2]
    th, rows = even_windows(ph, tiling.tile, tiling.overlap)
    tw, cols = even_windows(pw, tiling.tile, tiling.overlap)
    origins = [(y, x) for y in rows for x in cols]
    weight = np.outer(_blend_window(th, tiling.overlap), _blend_window(tw, tiling.overlap))[..., None]
    acc = np.zeros((ph, pw, image.shape[2]), np.float32)
    norm = np.zeros((ph, pw, 1), np.float32)
    # At most `tiling.batch` tiles per device a call, the fewest calls, all of one size: every
    # device busy, and on average less than one padded tile per device and call.
    devices = denoiser.devices
    for indices, valid in even_batches(len(origins), tiling.batch * devices, devices):
        tiles = np.stack([image[y : y + th, x : x + tw] for y, x in (origins[i] for i in indices)])
        out = np.asarray(denoiser(tiles, fold_in_each(key, indices)))
        for i, o in zip(indices[:valid], out):
            y, x = origins[i]
            acc[y : y + th, x : x + tw] += o * weight
            norm[y : y + th, x : x + tw] += weight
    return (acc / norm)[:h, :w]


def denoise_images(
    denoiser: BoundDenoiser, images: np.ndarray, keys: jax.Array, tiling: Tiling = Tiling()
) -> np.ndarray:
    """A stack (N, H, W, 3) of same-size images in 0..255, image i drawing from keys[i]:
    item i is `denoise_image(denoiser, images[i], keys[i], tiling)`. Images up to a tile go
    through the network in one call, the N items spread over the devices; larger ones are
    tiled one by one (their tiles already fill the devices)."""
    h, w = images.shape[1:3]
    padded = pad_to_min_side(images, denoiser.min_side(), axes=(1, 2))
    if padded.shape[1] <= tiling.tile and padded.shape[2] <= tiling.tile:
        return np.asarray(denoiser(padded, keys))[:, :h, :w]
    return np.stack([denoise_image(denoiser, image, key, tiling) for image, key in zip(images, keys)])
