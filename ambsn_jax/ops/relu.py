"""The networks' ReLU: `jax.nn.relu`'s numbers, with a backward pass that keeps one bit per value.

`jax.nn.relu`'s gradient reads its input (x > 0). In a training step XLA then keeps, for every
conv + ReLU, both the conv's raw output (for that mask) and the ReLU's output (the next conv's
kernel gradient reads it): two float32 maps where one is needed. Asking the backward to read the
ReLU's output instead does not help, because XLA fuses the elementwise ReLU back into the
backward's select and so reads the raw output again. What it does not duplicate into a consumer is
a reduction: the forward here packs the mask into bits (8 channels a byte, a reduction), so the
backward reads 1/32 of a float32 map and the raw output dies right after the ReLU. Measured in
bench/NOTES.md ("Memory of a training step"): AM-BSN's step at C = 128, batch 8, from 7,685 to
5,089 MiB of XLA's planned buffers, and no slower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

_BITS = 8  # mask values a byte holds


def _bit_weights() -> np.ndarray:
    return (1 << np.arange(_BITS)).astype(np.uint8)


def pack_mask(mask: jax.Array) -> jax.Array:
    """Booleans (..., C) -> uint8 (..., ceil(C / 8)), channel 8k + i in bit i of byte k.

    Packing the channel axis keeps the leading (batch) axis as it is, so a batch sharded over
    devices stays sharded and the packing needs no communication."""
    pad = -mask.shape[-1] % _BITS
    mask = jnp.pad(mask, [(0, 0)] * (mask.ndim - 1) + [(0, pad)])
    groups = mask.reshape(*mask.shape[:-1], -1, _BITS).astype(jnp.uint8)
    return jnp.sum(groups * _bit_weights(), axis=-1, dtype=jnp.uint8)


def unpack_mask(packed: jax.Array, channels: int) -> jax.Array:
    """Inverse of `pack_mask` for a mask of `channels` channels."""
    bits = (packed[..., None] & _bit_weights()) != 0
    return bits.reshape(*packed.shape[:-1], -1)[..., :channels]


@jax.custom_vjp
def relu(x: jax.Array) -> jax.Array:
    """max(x, 0); its gradient is jax.nn.relu's bit for bit (0 at x = 0, and for NaN)."""
    return jnp.maximum(x, 0)


def _relu_fwd(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    y = jnp.maximum(x, 0)
    return y, pack_mask(y > 0)


def _relu_bwd(packed: jax.Array, g: jax.Array) -> tuple[jax.Array]:
    return (jnp.where(unpack_mask(packed, g.shape[-1]), g, jnp.zeros_like(g)),)


relu.defvjp(_relu_fwd, _relu_bwd)
