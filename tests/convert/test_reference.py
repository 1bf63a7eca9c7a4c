"""The PyTorch reference (ambsn_jax.convert.reference) holds the releases' state-dict keys."""

from __future__ import annotations

import pytest
import torch

from ambsn_jax.convert.reference import ReleaseDenoiser, twin_of
from ambsn_jax.nets import registry
from tests.helpers import spec_shapes


@pytest.mark.parametrize("arch,tsv", [("apbsn", "apbsn_state_dict.tsv"), ("mmbsn", "mmbsn_o_a45_state_dict.tsv")])
def test_reference_has_the_release_keys(arch, tsv):
    want = spec_shapes(tsv)
    record = registry.get(arch)
    ref = ReleaseDenoiser(bsn=twin_of(record.config()), tta=False)
    assert {k: tuple(v.shape) for k, v in ref.state_dict().items()} == want
    ref.load_state_dict({k: torch.zeros(shape) for k, shape in want.items()}, strict=True)


def test_am_bsn_wrapper_defaults_are_the_release():
    ref = ReleaseDenoiser(base_ch=8)
    assert (ref.pd_a, ref.pd_b, ref.pd_pad, ref.R3, ref.R3_T, ref.R3_p, ref.tta) == (5, 2, 2, True, 8, 0.16, True)
    assert set(ref.state_dict()) == {f"bsn.{k}" for k in twin_of(registry.get("ambsn").config(base_ch=8)).state_dict()}
