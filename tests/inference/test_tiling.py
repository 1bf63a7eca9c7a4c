"""Images of any size (ambsn_jax.inference.tiling): tiles, cross-fades, and tiny images."""

from __future__ import annotations

import dataclasses

import jax
import numpy as np
import pytest

from ambsn_jax.inference.tiling import denoise_image
from ambsn_jax.nets.ambsn import AMBSN, AMBSNConfig
from ambsn_jax.ops.windows import Tiling, even_windows, pad_to_min_side
from flax import nnx
from tests.helpers import RELEASE, bound, image


class _Identity:
    """Stands in for a BoundDenoiser: returns its tiles unchanged."""

    cfg = RELEASE
    devices = 1

    def __call__(self, x, keys):
        return x

    def min_side(self) -> int:
        return 3


def test_tiles_blend_without_seams(rng):
    # Any pixel's weights over the tiles covering it must sum to one: identity in, image out.
    img = image(rng, 1, 130, 170)[0]
    out = denoise_image(_Identity(), img, jax.random.key(0), Tiling(tile=64, overlap=16))
    np.testing.assert_allclose(out, img, rtol=1e-6)


def test_tiled_matches_untiled_inside_tiles(rng):
    # One DCl per body keeps the receptive field at 8 PD-2 sub-image pixels (16 image pixels),
    # so pixels 20 from every tile edge see exactly what the untiled pass sees. Image borders
    # count as edges too: there PD sub-images see each other across their zero padding.
    model = AMBSN(AMBSNConfig(base_ch=8, dcl1_num=1, dcl2_num=1), rngs=nnx.Rngs(0))
    denoiser = bound(model, dataclasses.replace(RELEASE, tta=False, r3=False))
    img = image(rng, 1, 130, 170)[0]
    key = jax.random.key(0)
    tile, overlap, margin = 64, 16, 20
    tiled = denoise_image(denoiser, img, key, Tiling(tile=tile, overlap=overlap))
    whole = np.asarray(denoiser(img[None], key[None])[0])
    assert tiled.shape == img.shape and np.all(np.isfinite(tiled))

    def interior(size: int) -> np.ndarray:
        ok = np.ones(size, bool)
        side, starts = even_windows(size, tile, overlap)
        for s in starts:
            idx = np.arange(s, s + side)
            ok[idx[(idx - s < margin) | (s + side - idx <= margin)]] = False
        return ok

    rows, cols = interior(130), interior(170)
    assert rows.sum() > 10 and cols.sum() > 10
    diff = np.abs(tiled - whole)[np.ix_(rows, cols)]
    assert diff.max() < 1e-4
    assert np.abs(tiled - whole).max() > 1e-3  # the edges do matter, elsewhere


@pytest.mark.parametrize("size", [(20, 20), (2, 2), (2, 7)])
def test_small_images_go_through_whole_padded_to_the_minimum(flax_model, rng, size):
    """An image within one tile is one call; one shorter than R3's reflection needs is
    edge-padded first and cropped back."""
    denoiser = bound(flax_model(8))
    img = image(rng, 1, *size)[0]
    key = jax.random.key(0)
    out = denoise_image(denoiser, img, key)
    padded = pad_to_min_side(img, denoiser.min_side())
    want = np.asarray(denoiser(padded[None], key[None])[0])[: size[0], : size[1]]
    assert out.shape == img.shape
    np.testing.assert_array_equal(out, want)
    assert np.all(np.isfinite(out)) and np.abs(out).max() > 0
