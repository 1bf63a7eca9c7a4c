"""The network's convolution: the numbers of `lax.conv_general_dilated`, faster on CPUs.

Two things XLA:CPU does slowly (measured in `bench/NOTES.md`), which made a training step
slower than PyTorch's:
- a 1x1 convolution runs at half the speed of the same matrix product, forward and backward:
  it is computed as that product, on every platform;
- the kernel gradient of a k x k convolution becomes another convolution whose "kernel" is the
  whole output gradient (e.g. 130 x 130 taps), 4-5x the forward's time. It is, tap by tap, a
  matrix product (input window of the tap)^T @ (output gradient): on CPUs that is what runs.
  GPUs keep XLA's own (cuDNN's backward-filter kernels).
Traced inside `winograd(True)`, on CPUs the unmasked 3x3 and 5x5 convolutions (forward and both
gradients) run by Winograd's minimal filtering (`ops/winograd.py`). It is opt-in: only single
layers were measured faster (bench/NOTES.md), not yet whole networks; elsewhere the forward
pass and the input gradient of k x k convolutions are XLA's.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from functools import partial

import jax
import jax.numpy as jnp

from ambsn_jax.ops import winograd as wino

Padding = tuple[tuple[int, int], ...]
Dilation = tuple[int, ...]

# Read when a network is traced: the switch of InferenceConfig.winograd / train.winograd.
_WINOGRAD = contextvars.ContextVar("ambsn_jax_winograd", default=False)


@contextlib.contextmanager
def winograd(on: bool) -> Iterator[None]:
    """Trace what runs inside with (True, the default) or without the CPU's Winograd convolutions."""
    token = _WINOGRAD.set(on)
    try:
        yield
    finally:
        _WINOGRAD.reset(token)


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
    padding = tuple(map(tuple, padding))
    if rhs.shape[:2] == (1, 1) and padding == ((0, 0), (0, 0)):
        # XLA:CPU runs a 1x1 convolution at half the speed of the same matrix product, forward
        # and backward (bench/NOTES.md); as a 2-D product its gradients are 2-D products too.
        flat = lhs.reshape(-1, lhs.shape[-1]) @ rhs.reshape(rhs.shape[2:])
        return flat.reshape(*lhs.shape[:-1], rhs.shape[-1])
    tile = wino.tile_for(lhs, rhs) if _WINOGRAD.get() else None
    return _conv(lhs, rhs, padding, tuple(rhs_dilation or (1,) * (lhs.ndim - 2)), tile)


def _xla_conv(x: jax.Array, w: jax.Array, padding: Padding, dilation: Dilation) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x, w, (1,) * (x.ndim - 2), padding, rhs_dilation=dilation, dimension_numbers=("NHWC", "HWIO", "NHWC")
    )


@partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv(x: jax.Array, w: jax.Array, padding: Padding, dilation: Dilation, tile: int | None) -> jax.Array:
    """The conv; `tile`: Winograd's output tile on CPUs (None: XLA's conv everywhere)."""
    if tile is None:
        return _xla_conv(x, w, padding, dilation)
    cpu = partial(wino.conv, padding=padding, dilation=dilation, m=tile)
    return jax.lax.platform_dependent(x, w, cpu=cpu, default=partial(_xla_conv, padding=padding, dilation=dilation))


def _conv_fwd(x, w, padding, dilation, tile):
    return _conv(x, w, padding, dilation, tile), (x, w)


def _conv_bwd(padding, dilation, tile, residuals, g):
    x, w = residuals

    def xla_grads(x, w, g):
        return jax.vjp(lambda x, w: _xla_conv(x, w, padding, dilation), x, w)[1](g)

    if tile is not None:
        # The transforms are linear: autodiff's gradients are transform-domain products too.
        def wino_grads(x, w, g):
            return jax.vjp(lambda x, w: wino.conv(x, w, padding, dilation, tile), x, w)[1](g)

        return jax.lax.platform_dependent(x, w, g, cpu=wino_grads, default=xla_grads)
    # Without Winograd only the kernel gradient differs by platform: the input gradient stays
    # outside the switch, so an export for several platforms holds one copy of it.
    (dx,) = jax.vjp(lambda x: _xla_conv(x, w, padding, dilation), x)[1](g)
    dw = jax.lax.platform_dependent(
        x, g, cpu=partial(kernel_grad_by_taps, w.shape, padding, dilation), default=lambda x, g: xla_grads(x, w, g)[1]
    )
    return dx, dw


_conv.defvjp(_conv_fwd, _conv_bwd)


_BAND_ROWS = 8  # output rows a band; measured: 2 to 8 are equally fast, 32 is 1.3x slower


def kernel_grad_by_taps(
    kernel_shape: Sequence[int], padding: Padding, dilation: Dilation, x: jax.Array, g: jax.Array
) -> jax.Array:
    """d(loss)/d(kernel) of a stride-1 2-D conv: for each tap (i, j), the input window that tap
    reads, flattened to (pixels, C_in), transposed, times the output gradient (pixels, C_out).

    A k x k kernel reads its input k^2 times, so the sum runs over bands of output rows: each
    band's inputs stay in cache across the taps (at 8 x 130^2 x 128, dilation 2: 1.3x faster
    than whole windows, 2.6x faster than XLA:CPU's own gradient; bench/NOTES.md). The bands
    split the rows, not the batch, so a batch sharded over devices stays sharded.
    """
    kh = kernel_shape[0]
    (top, _), (left, right) = padding
    h_in, h = x.shape[1], g.shape[1]
    bands = -(-h // _BAND_ROWS)
    g = jnp.pad(g, ((0, 0), (0, bands * _BAND_ROWS - h), (0, 0), (0, 0)))  # zero rows add nothing
    reach = (kh - 1) * dilation[0]

    def band(total, b):
        # The band's input rows, zero outside the image, are cut from `x` itself: a padded copy
        # of `x` made for the scan would be what the forward pass keeps for this gradient, 9-12%
        # larger than `x` (bench/NOTES.md, "Memory of a training step").
        rows = b * _BAND_ROWS - top + jnp.arange(_BAND_ROWS + reach)
        inside = (rows >= 0) & (rows < h_in)
        xb = jnp.where(inside[None, :, None, None], jnp.take(x, jnp.clip(rows, 0, h_in - 1), axis=1), 0)
        xb = jnp.pad(xb, ((0, 0), (0, 0), (left, right), (0, 0)))
        grad = jax.lax.dynamic_slice_in_dim(g, b * _BAND_ROWS, _BAND_ROWS, axis=1)
        return total + _taps(xb, grad, kernel_shape, dilation), None

    zero = jnp.zeros(kernel_shape, jnp.result_type(x, g))
    return jax.lax.scan(band, zero, jnp.arange(bands))[0]


def _taps(xp: jax.Array, g: jax.Array, kernel_shape: Sequence[int], dilation: Dilation) -> jax.Array:
    """The kernel gradient from the padded input `xp` whose windows cover exactly `g`'s pixels."""
    kh, kw, cin, cout = kernel_shape
    _, h, w, _ = g.shape
    dy, dx = dilation
    g2 = g.reshape(-1, cout)
    rows = [
        jnp.stack([xp[:, i * dy : i * dy + h, j * dx : j * dx + w].reshape(-1, cin).T @ g2 for j in range(kw)])
        for i in range(kh)
    ]
    return jnp.stack(rows)
