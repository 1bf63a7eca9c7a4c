"""AP-BSN's network against the PyTorch reference of its release."""

from __future__ import annotations

import pytest
from flax import nnx

from ambsn_jax.nets import registry
from ambsn_jax.nets.apbsn import APBSN, APBSNConfig
from tests.helpers import assert_release_params, image

RELEASE_PARAMS = 3_656_131
# Width 16, not 8: at 8 these random-init networks are nearly constant (their output varies
# across pixels by ~1e-3, or not at all), so a wiring mistake could hide under the tolerance.
NARROW = APBSNConfig(base_ch=16)


def test_parameter_count_is_the_release():
    assert_release_params(APBSNConfig(), RELEASE_PARAMS)


@pytest.mark.parametrize("cfg", [NARROW, APBSNConfig()], ids=["apbsn16", "apbsn128"])
def test_parity_networks_are_alive(assert_alive, cfg):
    assert_alive(cfg)


def test_narrow_parity(flax_model, reference, assert_parity, rng):
    assert_parity(flax_model(NARROW), reference(NARROW).bsn, image(rng, 1, 13, 17))


@pytest.mark.slow
def test_full_width_parity(flax_model, reference, assert_parity, rng):
    assert_parity(flax_model(APBSNConfig()), reference(APBSNConfig()).bsn, image(rng, 1, 20, 20))


def test_branch_is_masked_conv_two_1x1_then_dcb2(rng):
    """The Sequential `body` of the release, as attributes: the key map reads off these."""
    model = APBSN(APBSNConfig(base_ch=8, num_module=2), rngs=nnx.Rngs(0))
    assert model.branch1.masked.kernel.shape == (3, 3, 8, 8) and model.branch2.masked.kernel.shape == (5, 5, 8, 8)
    assert len(model.branch1.body.body) == 2
    keys = registry.get("apbsn").key_map(model.config)
    assert keys["branch1.body.6.body.0.weight"] == ("branch1", "body", "body", 0, "dilated", "kernel")
    assert keys["branch2.body.8.bias"] == ("branch2", "body", "out", "bias")
