"""The network's convolution: `lax.conv_general_dilated` with a faster kernel gradient on CPUs.

XLA:CPU differentiates a convolution with respect to its kernel as another convolution whose
"kernel" is the whole output gradient (e.g. 130 x 130 taps): its convolution library handles
that shape badly, 4-10x slower than the forward pass (`bench/NOTES.md`), which made a training
step slower than PyTorch's. The kernel gradient of a stride-1 convolution is, tap by tap, one
matrix product (input shifted by that tap)^T @ (output gradient) contracted over batch and
pixels: on a CPU that is what we compute. GPUs keep XLA's own gradient (cuDNN's backward-filter
kernels), and the forward pass and the input gradient are XLA's everywhere.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

import jax
import jax.numpy as jnp

Padding = tuple[tuple[int, int], ...]
Dilation = tuple[int, ...]


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
    lhs_dilation: Sequence[int] | None = None,
    rhs_dilation: Sequence[int] | None = None,
    dimension_numbers: jax.lax.ConvGeneralDilatedDimensionNumbers = None,
    feature_group_count: int = 1,
    precision: jax.lax.PrecisionLike = None,
    out_sharding: jax.sharding.Sharding | None = None,
) -> jax.Array:
    """Drop-in for `lax.conv_general_dilated` as `nnx.Conv` calls it, for the convolutions this
    network has: NHWC input, HWIO kernel, stride 1, explicit padding, no input dilation, one
    feature group."""
    def dims(spec):
        return jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, spec)

    if (
        any(s != 1 for s in window_strides)
        or any(d != 1 for d in lhs_dilation or ())
        or feature_group_count != 1
        or isinstance(padding, str)
        or dims(dimension_numbers) != dims(("NHWC", "HWIO", "NHWC"))
        or precision is not None
        or out_sharding is not None
    ):
        raise NotImplementedError("ambsn_jax.conv supports stride-1 NHWC/HWIO convs with explicit padding only")
    dilation = tuple(rhs_dilation or (1,) * (lhs.ndim - 2))
    return _conv(lhs, rhs, tuple(map(tuple, padding)), dilation)


def _xla_conv(x: jax.Array, w: jax.Array, padding: Padding, dilation: Dilation) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, w, (1,) * (x.ndim - 2), padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv(x: jax.Array, w: jax.Array, padding: Padding, dilation: Dilation) -> jax.Array:
    return _xla_conv(x, w, padding, dilation)


def _conv_fwd(x, w, padding, dilation):
    return _xla_conv(x, w, padding, dilation), (x, w)


def _conv_bwd(padding, dilation, residuals, g):
    x, w = residuals
    (dx,) = jax.vjp(lambda x: _xla_conv(x, w, padding, dilation), x)[1](g)

    def xla_kernel_grad(x, g):
        return jax.vjp(lambda w: _xla_conv(x, w, padding, dilation), w)[1](g)[0]

    dw = jax.lax.platform_dependent(
        x, g, cpu=partial(kernel_grad_by_taps, w.shape, padding, dilation), default=xla_kernel_grad
    )
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


def kernel_grad_by_taps(
    kernel_shape: Sequence[int], padding: Padding, dilation: Dilation, x: jax.Array, g: jax.Array
) -> jax.Array:
    """d(loss)/d(kernel) of a stride-1 2-D conv: for each tap (i, j), the input window that tap
    reads, flattened to (pixels, C_in), transposed, times the output gradient (pixels, C_out)."""
    kh, kw, cin, cout = kernel_shape
    (top, bottom), (left, right) = padding
    xp = jnp.pad(x, ((0, 0), (top, bottom), (left, right), (0, 0)))
    _, h, w, _ = g.shape
    g2 = g.reshape(-1, cout)
    rows = [
        jnp.stack(
            [
                xp[:, i * dilation[0] : i * dilation[0] + h, j * dilation[1] : j * dilation[1] + w].reshape(-1, cin).T
                @ g2
                for j in range(kw)
            ]
        )
        for i in range(kh)
    ]
    return jnp.stack(rows)
