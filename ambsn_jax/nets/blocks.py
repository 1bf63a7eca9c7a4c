"""The blocks the blind-spot networks of the family are made of (docs/release.md, "Networks").

Layout is NHWC; images are float32 on the 0..255 scale. Attribute names follow the releases'
module names where they can, so that each network's key map reads one to one.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.nets.masks import blind_spot_mask
from ambsn_jax.ops.conv import conv_general_dilated, winograd
from ambsn_jax.ops.relu import relu


def _torch_default_init(fan_in: int) -> nnx.Initializer:
    """PyTorch's default conv init: weights and biases uniform in +-1/sqrt(fan_in).

    The release defines its own init but never calls it, so training from scratch
    starts from this.
    """
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape, dtype=jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def _masked_conv_fn(kind: str, k: int):
    """`conv_general_dilated` with the blind-spot mask multiplied into the kernel.

    The mask is a compile-time constant closed over here rather than a state array (as
    `nnx.Conv(mask=...)` would keep it), so it is neither checkpointed nor trained and XLA
    can fold it.

    The masked conv is XLA's direct one even where the others run by Winograd: a direct conv
    multiplies a blind tap by an exact zero, while Winograd's transforms mix every input of a
    tile, so the blind pixel would leak into its output at the level of float32 rounding. (The
    dilated convs after it may use Winograd: their tiles mix only inputs a dilation apart, and
    the masked kernels reach less than a dilation, so no such offset leads back to the blind pixel.)
    """
    m = blind_spot_mask(kind, k)[:, :, None, None]

    def conv_fn(lhs, rhs, *args, **kwargs):
        with winograd(False):
            return conv_general_dilated(lhs, rhs * m.astype(rhs.dtype), *args, **kwargs)

    return conv_fn


def conv(
    cin: int,
    cout: int,
    k: int = 1,
    *,
    rngs: nnx.Rngs,
    dilation: int = 1,
    mask: str | None = None,
    init: nnx.Initializer | None = None,
) -> nnx.Conv:
    """A biased, zero-padded, stride-1 'same' conv as every conv of the release.

    With `mask`, the blind-spot pattern is multiplied into the kernel inside every forward
    pass (the release does it in place on the weight), so blind taps never contribute and
    their gradients are zero whatever the stored kernel holds. `init`: the kernel's initializer
    (biases then start at zero); default: PyTorch's, as the releases train from.
    """
    conv_fn = conv_general_dilated if mask is None else _masked_conv_fn(mask, k)
    default = _torch_default_init(cin * k * k)
    return nnx.Conv(
        cin,
        cout,
        (k, k),
        padding=dilation * (k // 2),
        kernel_dilation=dilation,
        conv_general_dilated=conv_fn,
        kernel_init=init or default,
        bias_init=nnx.initializers.zeros_init() if init else default,
        rngs=rngs,
    )


class DCl(nnx.Module):
    """Dilated residual block: x + 1x1(ReLU(3x3 conv of dilation `dilation`)).

    The releases call the dilation `stride`; it is the blind spot's reach, not a stride.
    """

    def __init__(self, ch: int, dilation: int, *, rngs: nnx.Rngs):
        self.dilated = conv(ch, ch, 3, dilation=dilation, rngs=rngs)
        self.pointwise = conv(ch, ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.pointwise(relu(self.dilated(x)))


class DCB1(nnx.Module):
    """First-stage branch: masked conv head, dilated body, and a fusion of the two.

    The release's `conv1_1` and `conv1_2` are one module applied to the same tensor, so
    their outputs are equal: it is one parameter here, evaluated once.
    """

    def __init__(
        self, ch: int, dilation: int, mask: str, k: int, num_dcl: int, *, rngs: nnx.Rngs
    ):
        self.masked = conv(ch, ch, k, mask=mask, rngs=rngs)
        self.head1 = conv(ch, ch, rngs=rngs)
        self.head2 = conv(ch, ch, rngs=rngs)
        self.conv1_1 = conv(ch, ch, rngs=rngs)
        self.body = nnx.List([DCl(ch, dilation, rngs=rngs) for _ in range(num_dcl)])
        self.body_out = conv(ch, ch, rngs=rngs)
        self.conv1_3 = conv(2 * ch, ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> tuple[jax.Array, jax.Array]:
        y0 = relu(self.head2(relu(self.head1(relu(self.masked(x))))))
        fm = relu(self.conv1_1(y0))
        y = fm
        for block in self.body:
            y = block(y)
        y = relu(self.body_out(y))
        cat = relu(self.conv1_3(jnp.concatenate([fm, y], axis=-1)))
        return fm, cat


class DCB2(nnx.Module):
    """Second-stage branch: `num_dcl` dilated residual blocks, then 1x1 + ReLU."""

    def __init__(self, ch: int, dilation: int, num_dcl: int, *, rngs: nnx.Rngs):
        self.body = nnx.List([DCl(ch, dilation, rngs=rngs) for _ in range(num_dcl)])
        self.out = conv(ch, ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for block in self.body:
            x = block(x)
        return relu(self.out(x))


class Tail(nnx.Module):
    """1x1 convs nC -> C -> C/2 -> C/2 -> out, ReLU between them, none after the last."""

    def __init__(self, cin: int, ch: int, out_ch: int, *, rngs: nnx.Rngs):
        widths = [cin, ch, ch // 2, ch // 2, out_ch]
        self.layers = nnx.List(
            [conv(a, b, rngs=rngs) for a, b in zip(widths[:-1], widths[1:])]
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        for layer in self.layers[:-1]:
            x = relu(layer(x))
        return self.layers[-1](x)
