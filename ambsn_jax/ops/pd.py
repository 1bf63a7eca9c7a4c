"""Pixel-shuffle down-sampling (PD) and its inverse (docs/release.md, "Pixel-shuffle down-sampling").

PD breaks the spatial correlation of real camera noise: sub-image (i, j) = x[:, i::f, j::f]
holds pixels f apart, and the blind-spot network sees them as neighbours. The f x f
sub-images, each zero-padded by `pad`, are tiled as a mosaic, sub-image (i, j) at block-row i
and block-column j (before an optional permutation).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pd_down(
    x: jax.Array, f: int, pad: int = 0, perm: jax.Array | None = None
) -> jax.Array:
    """(N, H, W, C) -> (N, H + 2fp, W + 2fp, C) mosaic; H and W must divide by f.

    `perm` (length f*f) puts sub-image perm[k] (numbered i*f + j) at mosaic position k: the
    release's random sub-image shuffle. `pd_up` with the same `perm` undoes it.
    """
    n, h, w, c = x.shape
    if h % f or w % f:
        raise ValueError(f"PD factor {f} does not divide the image size {h}x{w}")
    hs, ws = h // f, w // f
    subs = x.reshape(n, hs, f, ws, f, c).transpose(0, 2, 4, 1, 3, 5)  # n, i, j, hs, ws, c
    if perm is not None:
        subs = subs.reshape(n, f * f, hs, ws, c)[:, perm].reshape(n, f, f, hs, ws, c)
    subs = jnp.pad(subs, ((0, 0), (0, 0), (0, 0), (pad, pad), (pad, pad), (0, 0)))
    hp, wp = hs + 2 * pad, ws + 2 * pad
    return subs.transpose(0, 1, 3, 2, 4, 5).reshape(n, f * hp, f * wp, c)


def pd_up(
    y: jax.Array, f: int, pad: int = 0, perm: jax.Array | None = None
) -> jax.Array:
    """Inverse of `pd_down`: cut the mosaic into f x f blocks, crop `pad`, interleave."""
    n, hm, wm, c = y.shape
    hp, wp = hm // f, wm // f
    blocks = y.reshape(n, f, hp, f, wp, c)[:, :, pad : hp - pad, :, pad : wp - pad]
    hs, ws = hp - 2 * pad, wp - 2 * pad
    blocks = blocks.transpose(0, 1, 3, 2, 4, 5)  # n, i, j, hs, ws, c
    if perm is not None:
        blocks = blocks.reshape(n, f * f, hs, ws, c)[:, jnp.argsort(perm)]
    blocks = blocks.reshape(n, f, f, hs, ws, c)
    return blocks.transpose(0, 3, 1, 4, 2, 5).reshape(n, hs * f, ws * f, c)
