"""Winograd convolutions (ambsn_jax.ops.winograd): XLA's numbers to a stated tolerance, for every
kernel size, dilation and padding the networks use, forward and both gradients."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambsn_jax.ops import winograd as wino
from ambsn_jax.ops.conv import conv_general_dilated, winograd

NHWC = ("NHWC", "HWIO", "NHWC")
# The transforms' rounding, relative to the largest value compared: F(4, 3) and F(4, 5) measure
# 1-4e-6 at these sizes (bench/NOTES.md, "Winograd convolutions"); 1e-5 leaves room and still
# fails at once on a wrong tap or offset (errors of order 1).
TOL = 1e-5


@pytest.mark.parametrize("m, k", [(2, 3), (4, 3), (2, 5), (4, 5)])
def test_transforms_compute_the_correlation(m, k):
    at, g, bt = wino.transforms(m, k)
    rng = np.random.default_rng(m * k)
    d, taps = rng.normal(size=m + k - 1), rng.normal(size=k)
    want = [taps @ d[i : i + k] for i in range(m)]
    np.testing.assert_allclose(at @ ((g @ taps) * (bt @ d)), want, rtol=0, atol=1e-12)


# (k, dilation, padding): the networks' DCl (3x3, dilation 2 / 3), their masked 3x3 / 5x5 and the
# student's 3x3, all 'same'; and an asymmetric padding, so that a swapped side cannot pass.
CASES = [(3, 2, ((2, 2), (2, 2))), (3, 3, ((3, 3), (3, 3))), (3, 1, ((1, 1), (1, 1))), (5, 1, ((2, 2), (2, 2))),
         (3, 1, ((0, 2), (1, 3)))]  # fmt: skip


@pytest.mark.parametrize("k, d, padding", CASES)
def test_values_and_both_gradients_equal_xla(k, d, padding):
    rng = np.random.default_rng(k + d)
    # 13 x 11: neither side a multiple of a tile (4 d), so the padding to whole tiles is cropped.
    x = jnp.asarray(rng.normal(size=(2, 13, 11, 6)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 6, 5)), jnp.float32)

    def out(x, w):
        return conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=(d, d), dimension_numbers=NHWC)

    def xla(x, w):
        return jax.lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=(d, d), dimension_numbers=NHWC)

    cotangent = jnp.asarray(rng.normal(size=xla(x, w).shape), jnp.float32)  # non-uniform: a wrong offset shows
    assert wino.tile_for(x, w) is not None
    with winograd(True):
        got, grads = jax.jit(lambda x, w, c: (out(x, w), jax.vjp(out, x, w)[1](c)))(x, w, cotangent)
    want, vjp_xla = jax.vjp(xla, x, w)
    for a, b in zip((got, *grads), (want, *vjp_xla(cotangent))):
        assert a.shape == b.shape
        np.testing.assert_allclose(a, b, rtol=0, atol=TOL * np.abs(b).max())


def test_kernel_gradient_is_a_batched_matrix_product():
    """The kernel gradient's work is one product per transform point, (C_in x tiles) @ (tiles x C_out)."""
    x, w = jnp.ones((1, 12, 12, 4)), jnp.ones((3, 3, 4, 6))
    jaxpr = jax.make_jaxpr(jax.grad(lambda w: jnp.sum(wino.conv(x, w, ((2, 2), (2, 2)), (2, 2), 4))))(w)
    eqns = list(_equations(jaxpr.jaxpr))
    dots = [e for e in eqns if e.primitive.name == "dot_general"]
    batched = [e.outvars[0].aval.shape for e in dots if e.params["dimension_numbers"][1][0]]
    assert {(36, 4, 6), (36, 6, 4)} & set(batched)
    assert not [e for e in eqns if "conv" in e.primitive.name]


def _equations(jaxpr):
    """Every equation of `jaxpr`, those of the programs it calls (jit, vjp) included."""
    for e in jaxpr.eqns:
        yield e
        for p in e.params.values():
            inner = getattr(p, "jaxpr", p)
            if hasattr(inner, "eqns"):
                yield from _equations(inner)


def test_only_float32_square_3x3_and_5x5_kernels_take_it():
    x = jnp.zeros((1, 8, 8, 4))
    assert wino.tile_for(x, jnp.zeros((3, 3, 4, 4))) == wino.TILES[3]
    assert wino.tile_for(x, jnp.zeros((5, 5, 4, 4))) == wino.TILES[5]
    assert wino.tile_for(x, jnp.zeros((7, 7, 4, 4))) is None
    assert wino.tile_for(x, jnp.zeros((3, 1, 4, 4))) is None
    assert wino.tile_for(x.astype(jnp.bfloat16), jnp.zeros((3, 3, 4, 4), jnp.bfloat16)) is None


def test_switched_off_the_conv_is_xla_s_to_the_bit():
    rng = np.random.default_rng(1)
    x = jnp.asarray(rng.normal(size=(1, 9, 9, 4)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(3, 3, 4, 4)), jnp.float32)
    args = ((1, 1), ((2, 2), (2, 2)))
    with winograd(False):
        got = conv_general_dilated(x, w, *args, rhs_dilation=(2, 2), dimension_numbers=NHWC)
    np.testing.assert_array_equal(got, jax.lax.conv_general_dilated(x, w, *args, rhs_dilation=(2, 2), dimension_numbers=NHWC))
