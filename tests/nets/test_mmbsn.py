"""MM-BSN's multi-mask network against the PyTorch reference of its release."""

from __future__ import annotations

import pytest

from ambsn_jax.nets.mmbsn import MM_KINDS, MMBSNConfig, mm_branch_names
from tests.helpers import assert_release_params, image

RELEASE_PARAMS = 5_297_987
NARROW = MMBSNConfig(base_ch=16)
# All ten kinds, written out of the release's branch order, with one DCl per block: the
# branch order, every mask pattern and the "c" / "r" quirk in one small network.
ALL_KINDS = MMBSNConfig(base_ch=16, dcl1_num=1, dcl2_num=1, mask_type="hui_fcha_cha_a135_a45_fsz_sz_r_c_o")


def test_parameter_count_is_the_release():
    assert_release_params(MMBSNConfig(), RELEASE_PARAMS)


@pytest.mark.parametrize("mask_type", ["o_x", "o_a45_o", "", "o__a45"])
def test_refuses_mask_strings_it_cannot_build(mask_type):
    with pytest.raises(ValueError, match="mask_type"):
        MMBSNConfig(mask_type=mask_type)


def test_branch_order_ignores_the_mask_string():
    assert MMBSNConfig(mask_type="hui_cha_o").kinds() == ("o", "cha", "hui")
    assert mm_branch_names("hui") == ("branch8_1", "branch8_2")
    assert [MM_KINDS[k][0] for k in ALL_KINDS.kinds()] == [1, 2, 3, 4, 5, 6, 7, 9, 10, 8]


@pytest.mark.parametrize("cfg", [NARROW, ALL_KINDS, MMBSNConfig()], ids=["mmbsn16", "all_kinds16", "mmbsn128"])
def test_parity_networks_are_alive(assert_alive, cfg):
    assert_alive(cfg)


def test_narrow_parity(flax_model, reference, assert_parity, rng):
    assert_parity(flax_model(NARROW), reference(NARROW).bsn, image(rng, 1, 13, 17))


def test_every_kind_matches_the_reference(flax_model, reference, assert_parity, rng):
    assert_parity(flax_model(ALL_KINDS), reference(ALL_KINDS).bsn, image(rng, 1, 13, 17))


@pytest.mark.slow
def test_full_width_parity(flax_model, reference, assert_parity, rng):
    assert_parity(flax_model(MMBSNConfig()), reference(MMBSNConfig()).bsn, image(rng, 1, 20, 20))
