"""The family's blocks: the release's conv, the dilated residual block, the tail."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ambsn_jax.nets.blocks import DCB2, DCl, Tail, conv
from ambsn_jax.nets.masks import blind_spot_mask


def test_dcl_is_x_plus_pointwise_of_relu_of_the_dilated_conv(rng):
    block = DCl(4, 3, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(1, 15, 13, 4)), jnp.float32)
    want = x + block.pointwise(jax.nn.relu(block.dilated(x)))
    np.testing.assert_allclose(block(x), want, rtol=1e-6)
    assert block.dilated.kernel_dilation == 3 and block.dilated.kernel.shape == (3, 3, 4, 4)


def test_dcl_reach_is_its_dilation(rng):
    """A poke at the centre moves only the 3x3 taps `dilation` apart (and the centre itself)."""
    block = DCl(2, 2, rngs=nnx.Rngs(1))
    nnx.update(block, jax.tree.map(jnp.abs, nnx.state(block, nnx.Param)))  # every ReLU open
    x = jnp.asarray(rng.uniform(1, 2, (1, 9, 9, 2)), jnp.float32)
    delta = np.abs(np.asarray(block(x.at[0, 4, 4].add(5.0)) - block(x)))[0].sum(-1)
    reached = {(int(i), int(j)) for i, j in zip(*np.nonzero(delta > 0))}
    assert reached == {(4 + di, 4 + dj) for di in (-2, 0, 2) for dj in (-2, 0, 2)}


def test_masked_conv_never_sees_the_blind_taps(rng):
    layer = conv(1, 1, 5, mask="x", rngs=nnx.Rngs(0))
    layer.kernel.set_value(jnp.ones((5, 5, 1, 1)))
    layer.bias.set_value(jnp.zeros(1))
    # A delta image: the output at (dy, dx) from it is the kernel tap that saw it.
    x = jnp.zeros((1, 5, 5, 1)).at[0, 2, 2, 0].set(1.0)
    seen = np.asarray(layer(x))[0, ::-1, ::-1, 0]
    np.testing.assert_array_equal(seen, blind_spot_mask("x", 5))


def test_tail_widths_and_no_relu_after_the_last():
    tail = Tail(32, 8, 3, rngs=nnx.Rngs(0))
    assert [layer.kernel.shape[2:] for layer in tail.layers] == [(32, 8), (8, 4), (4, 4), (4, 3)]
    last = tail.layers[-1]
    last.bias.set_value(jnp.full(3, -5.0))
    y = tail(jnp.zeros((1, 2, 2, 32)))
    # Zero input: every ReLU'd layer passes its bias, the last one adds -5 unclipped.
    assert float(y.max()) < 0


def test_dcb2_is_its_blocks_then_a_relu_1x1(rng):
    block = DCB2(4, 2, 3, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(1, 8, 8, 4)), jnp.float32)
    y = x
    for dcl in block.body:
        y = dcl(y)
    np.testing.assert_allclose(block(x), jax.nn.relu(block.out(y)), rtol=1e-6)
    assert len(block.body) == 3
