"""The networks' ReLU: jax.nn.relu's values and gradients, with one bit per value kept for the backward."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambsn_jax.ops.relu import pack_mask, relu, unpack_mask


@pytest.mark.parametrize("channels", [1, 3, 8, 13, 128])
def test_mask_packs_and_unpacks_to_itself(channels: int):
    mask = np.random.default_rng(channels).random((2, 5, channels)) > 0.5
    packed = pack_mask(jnp.asarray(mask))
    assert packed.dtype == jnp.uint8 and packed.shape == (2, 5, -(-channels // 8))
    np.testing.assert_array_equal(unpack_mask(packed, channels), mask)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
@pytest.mark.parametrize("channels", [3, 16])
def test_values_and_gradients_are_jax_relus(dtype, channels: int):
    x = jax.random.normal(jax.random.key(0), (2, 4, 4, channels), dtype)
    x = x.at[0, 0, 0].set(0).at[0, 0, 1].set(jnp.nan).at[1, 1, 1].set(-0.0)
    g = jax.random.normal(jax.random.key(1), x.shape, dtype)

    def vjp(f):
        y, back = jax.vjp(f, x)
        return y, back(g)[0]

    for ours, theirs in zip(vjp(relu), vjp(jax.nn.relu)):
        assert ours.dtype == theirs.dtype
        np.testing.assert_array_equal(np.asarray(ours, np.float32), np.asarray(theirs, np.float32))


def test_backward_keeps_one_map_per_layer_not_two():
    """A chain of 1x1 conv + ReLU layers: the gradient needs each ReLU's output (the next
    layer's weight gradient reads it) and, with jax.nn.relu, XLA keeps each pre-activation too.
    Here the pre-activations die in the forward pass: the plan holds ~one map per layer."""
    layers, n, c = 6, 4096, 64
    map_bytes = n * c * 4
    ws = jax.random.normal(jax.random.key(0), (layers, c, c)) / 8
    x = jax.random.normal(jax.random.key(1), (n, c))

    def temp_bytes(act) -> int:
        def loss(ws):
            h = x
            for w in ws:
                h = act(h @ w)
            return jnp.sum(h)

        return jax.jit(jax.grad(loss)).lower(ws).compile().memory_analysis().temp_size_in_bytes

    # Measured with jax 0.10.2: 6.25 maps here, 11.1 with jax.nn.relu.
    maps = temp_bytes(relu) / map_bytes
    assert maps <= layers + 2, f"{maps:.2f} maps planned (jax.nn.relu: {temp_bytes(jax.nn.relu) / map_bytes:.2f})"
