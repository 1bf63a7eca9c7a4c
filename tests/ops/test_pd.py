"""Pixel-shuffle down-sampling (ambsn_jax.ops.pd) against the release's."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from ambsn_jax.convert import reference
from ambsn_jax.ops.pd import pd_down, pd_up
from tests.helpers import image

PD_CASES = [(1, 0), (1, 2), (2, 0), (2, 2), (3, 1), (5, 2)]


@pytest.mark.parametrize("f,pad", PD_CASES)
@pytest.mark.parametrize("shuffle", [False, True])
def test_pd_round_trip(rng, f, pad, shuffle):
    x = jnp.asarray(image(rng, 2, 4 * f, 3 * f))
    perm = jnp.asarray(rng.permutation(f * f)) if shuffle else None
    down = pd_down(x, f, pad, perm)
    assert down.shape == (2, 4 * f + 2 * f * pad, 3 * f + 2 * f * pad, 3)
    np.testing.assert_array_equal(pd_up(down, f, pad, perm), x)


@pytest.mark.parametrize("f,pad", [c for c in PD_CASES if c[0] > 1])
def test_pd_matches_reference(assert_parity, rng, f, pad):
    x = image(rng, 2, 4 * f, 3 * f)
    down, up = reference.pixel_shuffle_down_sampling, reference.pixel_shuffle_up_sampling
    assert_parity(lambda v: pd_down(v, f, pad), lambda v: down(v, f, pad), x, tol=0)
    mosaic = image(rng, 2, f * (4 + 2 * pad), f * (3 + 2 * pad))
    assert_parity(lambda v: pd_up(v, f, pad), lambda v: up(v, f, pad), mosaic, tol=0)


def test_pd_shuffle_moves_sub_images(rng):
    x = jnp.asarray(image(rng, 1, 4, 4))
    perm = jnp.array([3, 0, 1, 2])
    shuffled = pd_down(x, 2, 0, perm)
    np.testing.assert_array_equal(shuffled[:, :2, :2], x[:, 1::2, 1::2])  # sub-image 3 first
