"""The registry of architectures: every record builds its network, maps the release's keys
exactly, and an unknown name is refused with the known ones."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from flax import nnx

from ambsn_jax.checkpoint.store import params_of
from ambsn_jax.convert.reference import twin_of
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.nets.ambsn import AMBSNConfig
from ambsn_jax.nets.apbsn import APBSNConfig
from ambsn_jax.nets.mmbsn import MMBSNConfig
from ambsn_jax.nets.student import StudentConfig
from tests.helpers import n_params, spec_shapes

SMALL = {
    "ambsn": AMBSNConfig(base_ch=8), "apbsn": APBSNConfig(base_ch=8), "mmbsn": MMBSNConfig(base_ch=8),
    "student": StudentConfig(base_ch=8, depth=2),
}  # fmt: skip
RELEASE_KEY_LISTS = {"apbsn": "apbsn_state_dict.tsv", "mmbsn": "mmbsn_o_a45_state_dict.tsv", "tmbsn": "tmbsn_state_dict.tsv"}


def test_the_registry_holds_the_three_networks_and_the_students():
    assert list(registry.ARCHITECTURES) == ["ambsn", "apbsn", "mmbsn", "student", "tmbsn", "nbsn"]
    assert {a.name: a.display_name for a in registry.ARCHITECTURES.values()} == {
        "ambsn": "AM-BSN", "apbsn": "AP-BSN", "mmbsn": "MM-BSN", "student": "student U-Net", "tmbsn": "TM-BSN",
        "nbsn": "NBSN",
    }  # fmt: skip
    assert {a.name: (a.release_tta, a.blind_spot) for a in registry.ARCHITECTURES.values()} == {
        "ambsn": (True, True), "apbsn": (False, True), "mmbsn": (False, True), "student": (False, False),
        "tmbsn": (False, True), "nbsn": (False, False),
    }  # fmt: skip
    pds = {a.name: (a.release_train_pd, a.release_pd_pad) for a in registry.ARCHITECTURES.values()}
    assert pds == {"ambsn": (5, 2), "apbsn": (5, 2), "mmbsn": (5, 2), "student": (1, 0), "tmbsn": (1, 0), "nbsn": (1, 0)}


def test_get_refuses_unknown_names_listing_the_known():
    assert registry.get("mmbsn").config is MMBSNConfig
    with pytest.raises(UserError, match=r"^unknown architecture 'unet'; known: ambsn, apbsn, mmbsn, student, tmbsn, nbsn$"):
        registry.get("unet")


@pytest.mark.parametrize("arch", list(RELEASE_KEY_LISTS))
def test_key_maps_cover_exactly_the_official_key_lists(arch):
    """Every tensor of the release's state dict maps to a parameter of the network's shape, and
    every parameter is reached; mask buffers go to the masked kernels."""
    record = registry.get(arch)
    cfg = record.config()
    want = {k.removeprefix("bsn."): shape for k, shape in spec_shapes(RELEASE_KEY_LISTS[arch]).items()}
    names, masks = record.key_map(cfg), record.mask_map(cfg)
    assert set(names) | set(masks) == set(want) and not set(names) & set(masks)
    abstract = nnx.eval_shape(lambda: record.network(cfg, rngs=nnx.Rngs(0)))
    shapes = {path: v.get_value().shape for path, v in nnx.to_flat_state(nnx.state(abstract, nnx.Param))}
    assert set(names.values()) == set(shapes)
    for key, path in names.items():
        h_w_i_o = shapes[path]
        torch_shape = (h_w_i_o[3], h_w_i_o[2], *h_w_i_o[:2]) if key.endswith(".weight") else h_w_i_o
        assert want[key] == torch_shape, key
    for key, (path, pattern) in masks.items():
        assert want[key][-2:] == pattern.shape and path in shapes and shapes[path][:2] == pattern.shape


def test_am_bsn_key_map_covers_exactly_the_reference_state_dict():
    """AM-BSN's key list is its reference's (tests/convert/test_reference.py checks the rest)."""
    record = registry.get("ambsn")
    cfg = AMBSNConfig(base_ch=8)
    sd = twin_of(cfg).state_dict()
    assert set(record.key_map(cfg)) | set(record.mask_map(cfg)) == set(sd)
    # The release's shared modules: two names, one parameter.
    names = record.key_map(cfg)
    assert names["conv2_1.0.weight"] == names["conv2_2.0.weight"] == ("conv2", "kernel")
    assert names["branch_local.conv1_1.0.bias"] == names["branch_local.conv1_2.0.bias"]


@pytest.mark.parametrize("arch", list(SMALL))
def test_build_makes_each_network_of_its_config(arch):
    cfg = SMALL[arch]
    model = registry.build(arch, cfg)
    assert type(model) is registry.get(arch).network and model.config == cfg
    # The parameter count is the release's network's, at this width.
    assert n_params(model) == sum(p.numel() for p in twin_of(cfg).parameters())
    # A config dict builds the same network; the seed alone decides the weights.
    again = registry.build(arch, cfg.to_dict(), seed=0)
    jax.tree.map(np.testing.assert_array_equal, params_of(again), params_of(model))
    other = registry.build(arch, cfg, seed=1)
    assert not np.array_equal(np.asarray(other.head.kernel.get_value()), np.asarray(model.head.kernel.get_value()))
    # graphdef is the structure of build(), without weights: merged with its parameters, the same network.
    merged = nnx.merge(registry.graphdef(arch, cfg), params_of(model))
    x = np.random.default_rng(0).uniform(0, 255, (1, 9, 11, 3)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(merged(x)), np.asarray(model(x)))
    assert registry.of_config(cfg) is registry.get(arch)


def test_network_config_fills_release_values_and_refuses_bad_ones():
    assert registry.network_config("mmbsn", {"base_ch": 8}) == MMBSNConfig(base_ch=8)
    assert registry.network_config("apbsn", {}) == APBSNConfig()
    with pytest.raises(UserError, match=r"AP-BSN config \{'width': 8\}: .*width"):
        registry.network_config("apbsn", {"width": 8})
    with pytest.raises(UserError, match="MM-BSN config .*mask_type 'o_x'"):
        registry.network_config("mmbsn", {"mask_type": "o_x"})
    with pytest.raises(UserError, match="unknown architecture"):
        registry.network_config("unet", {})
