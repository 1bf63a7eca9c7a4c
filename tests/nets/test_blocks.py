"""The family's blocks: the release's conv, the dilated residual block, the tail."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ambsn_jax.nets import registry
from ambsn_jax.nets.blocks import DCB2, DCl, Tail, conv
from ambsn_jax.nets.masks import blind_spot_mask
from ambsn_jax.ops.conv import winograd

# TM-BSN's convs are all masked, so Winograd never runs in it: nothing to check there.
ARCHS = [a.name for a in registry.ARCHITECTURES.values() if a.blind_spot and a.name != "tmbsn"]


def test_dcl_is_x_plus_pointwise_of_relu_of_the_dilated_conv(rng):
    block = DCl(4, 3, rngs=nnx.Rngs(0))
    x = jnp.asarray(rng.normal(size=(1, 15, 13, 4)), jnp.float32)
    want = x + block.pointwise(jax.nn.relu(block.dilated(x)))
    np.testing.assert_allclose(block(x), want, rtol=1e-6)
    assert block.dilated.kernel_dilation == 3 and block.dilated.kernel.shape == (3, 3, 4, 4)


def test_dcl_reach_is_its_dilation(rng):
    """A poke at the centre moves only the 3x3 taps `dilation` apart (and the centre itself).

    With Winograd (on CPUs) rounding also reaches the rest of the tile, but only pixels a
    dilation apart: what keeps the networks' blind spots exact (`blocks._masked_conv_fn`)."""
    block = DCl(2, 2, rngs=nnx.Rngs(1))
    nnx.update(block, jax.tree.map(jnp.abs, nnx.state(block, nnx.Param)))  # every ReLU open
    x = jnp.asarray(rng.uniform(1, 2, (1, 9, 9, 2)), jnp.float32)
    taps = {(4 + di, 4 + dj) for di in (-2, 0, 2) for dj in (-2, 0, 2)}
    for fast in (False, True):
        with winograd(fast):
            delta = np.abs(np.asarray(block(x.at[0, 4, 4].add(5.0)) - block(x)))[0].sum(-1)
        reached = {(int(i), int(j)) for i, j in zip(*np.nonzero(delta > 0))}
        assert taps <= reached and all(i % 2 == 0 and j % 2 == 0 for i, j in reached)
        assert fast or reached == taps
        leak = reached - taps
        assert not leak or max(delta[i, j] for i, j in leak) < 1e-5 * delta.max()


@pytest.mark.parametrize("arch", ARCHS)
def test_no_output_pixel_depends_on_its_own_input_with_winograd_on(arch):
    """The blind spot of the real networks, with the fast path on: the gradient of output pixel p
    with respect to input pixel p is exactly zero (and its neighbours' is not)."""
    model = registry.build(arch, {"base_ch": 8})
    # Positive weights keep every ReLU open on a positive image: only the masks can cut a path.
    nnx.update(model, jax.tree.map(jnp.abs, nnx.state(model, nnx.Param)))
    graphdef, params = nnx.split(model)
    x = jnp.asarray(np.random.default_rng(0).uniform(1, 2, (1, 18, 17, 3)), jnp.float32)
    pixels = [(0, 0), (7, 8), (8, 9), (17, 16), (12, 3)]  # corners, the interior, across tile edges

    def input_grads(x):
        with winograd(True):
            y, vjp = jax.vjp(lambda x: nnx.merge(graphdef, params)(x), x)
        onehot = jnp.zeros((len(pixels), *y.shape)).at[(jnp.arange(len(pixels)), 0, *np.transpose(pixels))].set(1.0)
        return jax.vmap(vjp)(onehot)[0]

    grads = np.abs(np.asarray(jax.jit(input_grads)(x)))[:, 0].sum(-1)  # (pixel, H, W)
    for g, (i, j) in zip(grads, pixels):
        assert g[i, j] == 0
        assert g[max(i - 1, 0) : i + 2, max(j - 1, 0) : j + 2].sum() > 0
    assert _conv_count(graphdef, params, x, True) < _conv_count(graphdef, params, x, False)  # it was on


def _conv_count(graphdef, params, x, fast: bool) -> int:
    with winograd(fast):
        text = jax.jit(lambda x: nnx.merge(graphdef, params)(x)).lower(x).as_text()
    return text.count("stablehlo.convolution")


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
