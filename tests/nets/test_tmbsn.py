"""TM-BSN's network against its PyTorch twin: every hole size, the multi-hole forward, any
image size (the release takes squares only), the blind spot, and the key map."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from ambsn_jax.checkpoint import torch_port
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.nets.masks import blind_spot_mask
from ambsn_jax.nets.tmbsn import TMBSNConfig, config_from_state_dict, shift_features
from tests.helpers import assert_release_params, image, nchw, nhwc, numpy_sd

RELEASE_PARAMS = 1_350_339  # the release's README: 1.35M
NARROW = TMBSNConfig(base_ch=8, blocks=2)


def scaled(twin: torch.nn.Module, hole: int):
    """The twin (0..1) on the port's 0..255 scale."""
    return lambda x: 255.0 * twin(x / 255.0, hole)


def test_parameter_count_is_the_release():
    assert_release_params(TMBSNConfig(), RELEASE_PARAMS)


def test_narrow_network_is_alive(reference, rng):
    with torch.no_grad():
        y = scaled(reference(NARROW).bsn, 2)(nchw(image(rng, 1, 12, 12)))
    assert float(y.std(dim=(2, 3)).min()) > 1.0


@pytest.mark.parametrize("hole", [0, 1, 2, 5])
def test_every_hole_size_matches_the_twin(flax_model, reference, assert_parity, rng, hole):
    model = flax_model(NARROW)
    assert_parity(lambda x: model(x, hole=hole), scaled(reference(NARROW).bsn, hole), image(rng, 2, 12, 12), tol=1e-3)


def test_forward_outs_is_one_backbone_pass_of_each_hole(flax_model, reference, rng):
    model, twin = flax_model(NARROW), reference(NARROW).bsn
    x = image(rng, 1, 10, 10)
    want = [255.0 * nhwc(y) for y in twin.forward_outs(nchw(x) / 255.0, [1, 2, 6])]
    got = model.forward_outs(jnp.asarray(x), (1, 2, 6))
    for g, w in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), w, atol=1e-3)


def test_a_non_square_input_is_each_rotation_as_the_release_computes_it(flax_model, reference, rng):
    """The release cannot stack unequal rotations; computed one by one with its own pieces
    (backbone, shift, undo), they are what the port returns for 9 x 14."""
    model, twin = flax_model(NARROW), reference(NARROW).bsn
    x = image(rng, 1, 9, 14)
    xt = nchw(x) / 255.0
    turned = xt.transpose(2, 3)
    rotations = [xt, turned.flip(3), xt.flip(2).flip(3), turned.flip(2)]
    undo = [lambda z: z, lambda z: z.transpose(2, 3).flip(2), lambda z: z.flip(2).flip(3), lambda z: z.transpose(2, 3).flip(3)]
    with torch.no_grad():
        z = torch.cat([u(twin.shifted(twin.unet(r), 3)) for u, r in zip(undo, rotations)], dim=1)
        want = 255.0 * nhwc(twin.nin_C(F.relu(twin.nin_B(F.relu(twin.nin_A(z))))))
    np.testing.assert_allclose(np.asarray(model(jnp.asarray(x), hole=3)), want, atol=1e-3)


def test_the_centre_is_blind_at_every_hole_but_zero(flax_model):
    """The output's centre pixel, differentiated by the input: zero at the centre at holes 1
    and 2, and at its 4-neighbours too at hole 2 (the blind spot is |dy| + |dx| < hole);
    non-zero at hole 0, which sees everything."""
    model = flax_model(NARROW)
    x = jnp.asarray(image(np.random.default_rng(1), 1, 11, 11))

    @jax.jit  # one compile for the three gradients; eager, each small op compiles alone
    def grads(v):
        centre = lambda hole: lambda u: model(u, hole=hole)[0, 5, 5].sum()  # noqa: E731
        return [jnp.abs(jax.grad(centre(h))(v))[0].sum(-1) for h in (0, 1, 2)]

    g0, g1, g2 = map(np.asarray, grads(x))
    assert g0[5, 5] > 0 and g1[5, 5] == 0 and g1[4, 5] > 0 and g1.max() > 0
    assert g2[4:7, 5].max() == 0 and g2[5, 4:7].max() == 0 and g2[4, 4] > 0


def test_shift_moves_down_and_left_with_zeros_in():
    f = jnp.arange(12.0).reshape(1, 3, 4, 1)
    out = np.asarray(shift_features(f, 1))
    np.testing.assert_array_equal(out[0, :, :, 0], [[0, 0, 0, 0], [0, 1, 2, 3], [4, 5, 6, 7]])
    np.testing.assert_array_equal(out[0, :, :, 1], [[1, 2, 3, 0], [5, 6, 7, 0], [9, 10, 11, 0]])
    with pytest.raises(ValueError, match="negative"):
        shift_features(f, -1)


def test_every_backbone_conv_is_masked_upper_triangular(official_state_dict):
    sd = torch_port.strip_prefixes(numpy_sd(official_state_dict(NARROW)))
    masks = {k: v for k, v in sd.items() if k.endswith(".mask")}
    assert len(masks) == 2 + NARROW.blocks * (2 * NARROW.blocks + 1)
    for v in masks.values():
        np.testing.assert_array_equal(v, np.broadcast_to(blind_spot_mask("triu", 3), v.shape))
    np.testing.assert_array_equal(blind_spot_mask("triu", 3), [[1, 1, 1], [0, 1, 1], [0, 0, 1]])


def test_keys_tell_the_config_and_detect_the_network(official_state_dict):
    sd = torch_port.strip_prefixes(numpy_sd(official_state_dict(NARROW)))
    assert torch_port.detect_arch(sd) == "tmbsn"
    assert config_from_state_dict(sd) == NARROW
    keys = registry.get("tmbsn").key_map(NARROW)
    assert keys["unet.RIR_blocks.1.res_blocks.0.conv2.weight"] == ("unet", "RIR_blocks", 1, "res_blocks", 0, "conv2", "kernel")
    assert set(keys) | set(registry.get("tmbsn").mask_map(NARROW)) == set(sd)


def test_unequal_block_counts_are_refused(official_state_dict):
    sd = torch_port.strip_prefixes(numpy_sd(official_state_dict(NARROW)))
    sd = {k: v for k, v in sd.items() if not k.startswith("unet.RIR_blocks.0.res_blocks.1.")}
    with pytest.raises(UserError, match="as many of each"):
        config_from_state_dict(sd)
