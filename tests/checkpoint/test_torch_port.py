"""State dicts <-> Flax parameters (ambsn_jax.checkpoint.torch_port): prefixes, detection, configs."""

from __future__ import annotations

import jax
import numpy as np
import pytest
import torch

from ambsn_jax.checkpoint import torch_port
from ambsn_jax.checkpoint.store import params_of
from ambsn_jax.convert.reference import twin_of
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.nets.ambsn import AMBSNConfig
from ambsn_jax.nets.apbsn import APBSNConfig
from ambsn_jax.nets.masks import blind_spot_mask
from ambsn_jax.nets.mmbsn import MMBSNConfig
from tests.helpers import numpy_sd

CONFIGS = {
    "ambsn": AMBSNConfig(base_ch=8),
    "apbsn": APBSNConfig(base_ch=8, num_module=3),
    "mmbsn": MMBSNConfig(base_ch=8, dcl1_num=1, dcl2_num=3, mask_type="o_fsz_hui"),
}


def test_fixture_checkpoint_is_a_hard_case(official_state_dict):
    sd = official_state_dict(8)
    for branch, kind, k in (("branch_local", "central", 3), ("branch_global", "x", 5)):
        blind = torch.from_numpy(blind_spot_mask(kind, k) == 0)
        assert torch.all(sd[f"bsn.{branch}.head.0.weight"][:, :, blind] != 0)
    assert all(torch.all(v != 0) for k, v in sd.items() if k.endswith(".bias"))


def test_prefix_forms_all_strip():
    forms = ["module.bsn.", "bsn.", "module.", ""]
    sd = {f"{p}tail.0.bias": np.zeros(1) for p in forms} | {"head.0.bsn.x": np.zeros(1)}
    stripped = torch_port.strip_prefixes(sd)
    assert sorted(stripped) == ["head.0.bsn.x", "tail.0.bias"]  # not from inside a key


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_architecture_and_config_are_read_off_the_keys(arch):
    """The release's own key names for a non-default config of each network: detected, its
    widths and block counts inferred, the parameters those of the network mapped back."""
    cfg = CONFIGS[arch]
    sd = numpy_sd(twin_of(cfg).state_dict())
    assert torch_port.detect_arch(sd) == arch
    assert torch_port.infer_config(sd) == cfg
    params, typed = torch_port.params_from_state_dict({f"bsn.{k}": v for k, v in sd.items()})
    assert typed == cfg
    want = params_of(registry.build(arch, cfg))
    assert jax.tree.structure(params) == jax.tree.structure(want)
    # Conv weights OIHW -> HWIO, masks multiplied in.
    record = registry.get(arch)
    path = next(iter(record.mask_map(cfg).values()))[0]
    key = next(k for k, v in record.key_map(cfg).items() if v == path)
    got = params
    for part in path:
        got = got[part]
    mask = next(iter(record.mask_map(cfg).values()))[1]
    np.testing.assert_array_equal(got, sd[key].transpose(2, 3, 1, 0) * mask[:, :, None, None])


def test_detection_refusals():
    with pytest.raises(UserError, match="cannot tell the architecture: branch keys of none of AM-BSN, AP-BSN, MM-BSN"):
        torch_port.detect_arch({"head.0.weight": np.zeros((8, 3, 1, 1))})
    with pytest.raises(UserError, match="no 4-D 'head.0.weight': not an AP-BSN checkpoint"):
        torch_port.infer_config({"branch1.body.0.weight": np.zeros(1)})
    with pytest.raises(UserError, match="no MM-BSN branch"):
        torch_port.infer_config({"head.0.weight": np.zeros((8, 3, 1, 1))}, "mmbsn")


def test_a_named_architecture_overrides_detection(official_state_dict):
    sd = numpy_sd(official_state_dict(8))
    with pytest.raises(UserError, match="missing keys: branch1.body.0.bias"):
        torch_port.params_from_state_dict(sd, "apbsn")
    with pytest.raises(UserError, match="unknown architecture 'dbsn'"):
        torch_port.params_from_state_dict(sd, "dbsn")
