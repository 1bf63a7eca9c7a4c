"""The network's convolution (ambsn_jax.ops.conv): XLA's forward, and on CPUs a tap-wise kernel gradient."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambsn_jax.ops.conv import conv_general_dilated, kernel_grad_by_taps, winograd


NHWC = ("NHWC", "HWIO", "NHWC")


def xla_conv(x, w, padding, dilation):
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=NHWC)


@pytest.mark.parametrize(
    "k, dilation, padding",
    [(1, (1, 1), ((0, 0), (0, 0))), (3, (2, 2), ((2, 2), (2, 2))), (5, (3, 3), ((6, 6), (6, 6))),
     (3, (1, 2), ((0, 2), (1, 3)))],  # fmt: skip
)
def test_values_and_gradients_equal_xla(k, dilation, padding):
    rng = np.random.default_rng(k)
    x = jnp.asarray(rng.normal(size=(2, 11, 9, 5)), jnp.float32)
    w = jnp.asarray(rng.normal(size=(k, k, 5, 4)), jnp.float32)

    def loss(conv):
        # A non-uniform cotangent, so a tap read from the wrong offset changes the result.
        return lambda x, w: jnp.sum(jnp.sin(conv(x, w, (1, 1), padding, rhs_dilation=dilation, dimension_numbers=NHWC)))

    with winograd(False):  # the direct path, exact to float32 rounding (tests/ops/test_winograd.py: the other)
        ours = jax.jit(jax.value_and_grad(loss(conv_general_dilated), argnums=(0, 1)))(x, w)
    want = jax.value_and_grad(loss(jax.lax.conv_general_dilated), argnums=(0, 1))(x, w)
    np.testing.assert_allclose(ours[0], want[0], rtol=1e-6)
    for got, ref in zip(ours[1], want[1]):
        np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * np.abs(ref).max())


def test_kernel_grad_by_taps_is_the_transposed_conv():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, 8, 8, 4)), jnp.float32)
    g = jnp.asarray(rng.normal(size=(3, 8, 8, 6)), jnp.float32)
    padding, dilation = ((2, 2), (2, 2)), (2, 2)
    w = jnp.zeros((3, 3, 4, 6))
    want = jax.vjp(lambda w: xla_conv(x, w, padding, dilation), w)[1](g)[0]
    got = kernel_grad_by_taps(w.shape, padding, dilation, x, g)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize(
    "kwargs",
    [{"window_strides": (2, 2)}, {"lhs_dilation": (2, 2)}, {"feature_group_count": 2}, {"padding": "SAME"},
     {"dimension_numbers": None}],  # fmt: skip
)
def test_unsupported_convolutions_are_refused(kwargs):
    args = {"window_strides": (1, 1), "padding": ((1, 1), (1, 1)), "dimension_numbers": NHWC} | kwargs
    with pytest.raises(NotImplementedError):
        conv_general_dilated(jnp.zeros((1, 4, 4, 2)), jnp.zeros((3, 3, 2, 2)), **args)


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="the tap-wise kernel gradient is the CPU's")
def test_cpu_kernel_gradient_is_matrix_products():
    """On a CPU the kernel gradient is compiled as dots, with no convolution left in it."""
    x, w = jnp.ones((2, 8, 8, 4)), jnp.ones((3, 3, 4, 4))

    def loss(w):
        padding = ((2, 2), (2, 2))
        return jnp.sum(conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=(2, 2), dimension_numbers=NHWC))

    hlo = jax.jit(jax.grad(loss)).lower(w).compile().as_text()
    assert "convolution" not in hlo and "dot" in hlo
