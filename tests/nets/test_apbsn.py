"""AP-BSN's network against the PyTorch reference of its release."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from flax import nnx

from ambsn_jax.nets import registry
from ambsn_jax.nets.apbsn import APBSN, APBSNConfig
from tests.helpers import image, n_params

RELEASE_PARAMS = 3_656_131
# Width 16, not 8: at 8 these random-init networks are nearly constant (their output varies
# across pixels by ~1e-3, or not at all), so a wiring mistake could hide under the tolerance.
NARROW = APBSNConfig(base_ch=16)


def test_parameter_count_is_the_release():
    model = nnx.eval_shape(lambda: APBSN(APBSNConfig(), rngs=nnx.Rngs(0)))
    assert n_params(model) == RELEASE_PARAMS
    bsn = registry.get("apbsn").reference(APBSNConfig())
    assert sum(p.numel() for p in bsn.parameters()) == RELEASE_PARAMS


@pytest.mark.parametrize("cfg", [NARROW, APBSNConfig()], ids=["apbsn16", "apbsn128"])
def test_parity_networks_are_alive(reference, rng, cfg):
    """Parity within 1e-4 (helpers.PARITY_TOL) means something only if outputs vary across
    pixels well beyond it."""
    with torch.no_grad():
        y = reference(cfg).bsn(torch.from_numpy(image(rng, 1, 13, 17).transpose(0, 3, 1, 2).copy()))
    assert float(y.std(dim=(2, 3)).min()) > 5e-3


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
