"""Stride-1 k x k convolutions by Winograd's minimal filtering (Lavin and Gray, CVPR 2016).

A conv becomes: input transform (each alpha x alpha input tile, alpha = m + k - 1, to the
transform domain) -> one matrix product per transform point (tiles x C_in) @ (C_in x C_out)
-> output transform (each tile back to m x m outputs). F(m, k) does alpha^2 multiplies per m^2
outputs where the direct conv does k^2 m^2: F(4, 3) 4x fewer, F(2, 5) 2.8x fewer. The
transforms are linear maps with small constant matrices, written as sums of strided slices,
so their gradients are autodiff's and the kernel gradient is a batched matrix product too
(transform-domain input^T @ transform-domain output gradient).

A dilation d needs no extra pass: an output tile takes m outputs d apart (outputs
m*d*b + d*i + r, i < m, for block b and phase r < d), whose inputs are d apart too, so the
tiles are cut from the phases of the input (the d^2 undilated convs of space-to-batch) without
moving the image. The image is zero-padded to whole tiles and the output cropped.

Numbers: the same convolution as `lax.conv_general_dilated` up to float32 rounding, which the
transforms amplify with m (bench/NOTES.md, "Winograd convolutions", gives the measured errors).
A masked kernel is masked before it is transformed, so its blind taps stay exactly zero in
what the output depends on (the transform of a kernel is a linear map of its taps).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

Padding = tuple[tuple[int, int], ...]
Dilation = tuple[int, ...]

# Interpolation points, in the order they are taken (the point at infinity comes on top):
# small magnitudes first keep the transforms' entries, and so the rounding, small.
_POINTS = (0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, 3.0, -3.0)


# Output tile m of F(m, k) per kernel size k: the fastest measured on CPUs (bench/NOTES.md,
# "Winograd convolutions"); kernels of other sizes keep XLA's conv.
TILES = {3: 4, 5: 4}


def tile_for(x: jax.Array, w: jax.Array) -> int | None:
    """The output tile for a float32 conv of input `x` (NHWC) by the square HWIO kernel `w`, or
    None where Winograd is not used (other sizes, other dtypes: bfloat16 would lose too much)."""
    kh, kw = w.shape[:2]
    if kh != kw or x.dtype != jnp.float32 or w.dtype != jnp.float32:
        return None
    return TILES.get(kh)


@functools.cache
def transforms(m: int, k: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(A^T, G, B^T) of F(m, k), float64: y = A^T [(G g) * (B^T d)] is the correlation of the
    alpha inputs d with the k taps g (m outputs), alpha = m + k - 1 (Toom-Cook, transposed)."""
    alpha = m + k - 1
    points = np.array(_POINTS[: alpha - 1])

    def evaluate(n: int) -> np.ndarray:
        # Rows: a polynomial of degree < n at each point, then its leading coefficient ("at infinity").
        v = np.vander(points, n, increasing=True)
        return np.vstack([v, np.eye(n)[-1]])

    # The product of polynomials of degree < m and < k from its alpha values: the inverse of
    # the alpha-point evaluation. Transposing that bilinear algorithm turns the product into a
    # correlation; the scale of each point moves from the data side into the kernel side.
    interpolate = np.linalg.inv(evaluate(alpha))
    bt = interpolate.T
    scale = np.abs(bt).max(axis=1, keepdims=True)
    return evaluate(m).T, evaluate(k) * scale, bt / scale


# Jitted, so that eager calls (tests, notebooks) run it as one program, not as ~200 small ops;
# inside a jitted network it is inlined.
@functools.partial(jax.jit, static_argnames=("padding", "dilation", "m"))
def conv(x: jax.Array, w: jax.Array, padding: Padding, dilation: Dilation = (1, 1), m: int = 4) -> jax.Array:
    """`lax.conv_general_dilated(x, w, (1, 1), padding, rhs_dilation=dilation)` for NHWC `x`
    and a square HWIO kernel `w`, by F(m, k)."""
    k = w.shape[0]
    at, g, bt = (np.asarray(t, np.float32) for t in transforms(m, k))
    alpha = m + k - 1
    n, h, wd, cin = x.shape
    out = [h + sum(padding[0]) - dilation[0] * (k - 1), wd + sum(padding[1]) - dilation[1] * (k - 1)]
    blocks = [-(-o // (m * d)) for o, d in zip(out, dilation)]
    need = [d * (alpha - 1) + m * d * b for d, b in zip(dilation, blocks)]
    pads = [(0, 0, 0), (padding[0][0], need[0] - h - padding[0][0], 0), (padding[1][0], need[1] - wd - padding[1][0], 0), (0, 0, 0)]
    xp = jax.lax.pad(x, jnp.zeros((), x.dtype), pads)
    v = _input_transform(xp, bt, 1, m, dilation[0], blocks[0])  # (a, N, By, dy, Wp, C)
    v = _input_transform(v, bt, 4, m, dilation[1], blocks[1])  # (b, a, N, By, dy, Bx, dx, C)
    u = jnp.einsum("ai,bj,ijco->baco", g, g, w.astype(jnp.float32)).astype(x.dtype)
    prod = jnp.einsum("tpc,tco->tpo", v.reshape(alpha * alpha, -1, cin), u.reshape(alpha * alpha, cin, -1))
    prod = prod.reshape(*v.shape[:-1], -1)
    y = _output_transform(prod, at, 1)  # (b, i, N, By, dy, Bx, dx, O)
    y = _output_transform(y, at, 0)  # (j, i, N, By, dy, Bx, dx, O)
    (dy, dx), cout = dilation, w.shape[-1]
    y = y.transpose(2, 3, 1, 4, 5, 0, 6, 7).reshape(n, blocks[0] * m * dy, blocks[1] * m * dx, cout)
    return y[:, : out[0], : out[1]]


def _input_transform(x: jax.Array, bt: np.ndarray, axis: int, m: int, d: int, blocks: int) -> jax.Array:
    """B^T along `axis` of every tile; the tile index (block, phase) replaces that axis and the
    alpha transform points come first."""
    alpha = bt.shape[0]
    span = m * d * blocks
    shape = x.shape[:axis] + (blocks, m * d) + x.shape[axis + 1 :]
    taps = [
        jax.lax.slice_in_dim(jax.lax.slice_in_dim(x, d * i, d * i + span, axis=axis).reshape(shape), 0, d, axis=axis + 1)
        for i in range(alpha)
    ]
    return jnp.stack([_combine(bt[a], taps) for a in range(alpha)])


def _output_transform(y: jax.Array, at: np.ndarray, axis: int) -> jax.Array:
    """A^T along `axis` (of transform points), the m outputs in its place."""
    parts = [jax.lax.index_in_dim(y, a, axis, keepdims=False) for a in range(y.shape[axis])]
    return jnp.stack([_combine(at[i], parts) for i in range(at.shape[0])], axis=axis)


def _combine(coefficients: np.ndarray, parts: list[jax.Array]) -> jax.Array:
    terms = [p if c == 1 else (-p if c == -1 else c * p) for c, p in zip(coefficients, parts) if c != 0]
    total = terms[0]
    for t in terms[1:]:
        total = total + t
    return total
