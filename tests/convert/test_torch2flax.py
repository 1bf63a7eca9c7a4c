"""The converter's library (ambsn_jax.convert.torch2flax): convert(), its verification, its names."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from ambsn_jax.checkpoint import torch_port
from ambsn_jax.checkpoint.store import load_checkpoint
from ambsn_jax.convert import flax2torch, torch2flax
from ambsn_jax.convert.reference import twin_of
from ambsn_jax.convert.verify import DEFAULT_TOLERANCE, max_abs_diffs
from ambsn_jax.nets import registry, tmbsn
from ambsn_jax.nets.blocks import conv
from ambsn_jax.nets.mmbsn import MMBSNConfig
from ambsn_jax.nets.nbsn import NBSNConfig
from ambsn_jax.nets.tmbsn import TMBSNConfig
from tests.helpers import numpy_sd, printed_diffs, write_pth

NBSN_PTH = os.environ.get("AMBSN_NBSN_PTH")


def test_default_out_and_tolerance():
    assert torch2flax.default_out(Path("/w/AMBSN.pth")) == Path("/w/AMBSN_orbax")
    assert torch2flax.DEFAULT_TOLERANCE == 5e-3


def test_convert_writes_what_it_returns(official_state_dict, tmp_path, capsys):
    cfg = MMBSNConfig(base_ch=8)
    src = write_pth(tmp_path / "MMBSN.pth", official_state_dict(cfg))
    written = torch2flax.convert(src, tmp_path / "out")
    assert written.path == (tmp_path / "out").absolute() and written.step == 0
    assert (written.meta.arch, written.meta.network_config(), written.meta.train_pd) == ("mmbsn", cfg, 5)
    assert written.meta.source == "MMBSN.pth"
    assert written.meta.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    loaded = load_checkpoint(tmp_path / "out")
    assert loaded.meta == written.meta
    jax.tree.map(np.testing.assert_array_equal, loaded.params, written.params)
    want, _ = torch_port.params_from_state_dict(numpy_sd(official_state_dict(cfg)))
    jax.tree.map(np.testing.assert_array_equal, loaded.params, want)
    # torch counts the release's shared modules once, as the port holds them once.
    want_count = sum(p.numel() for p in twin_of(cfg).parameters())
    assert torch2flax.parameter_count(written.params) == want_count
    assert "max abs diff vs the PyTorch reference (tolerance 0.005):" in capsys.readouterr().out


@pytest.mark.skipif(not NBSN_PTH, reason="set AMBSN_NBSN_PTH to the TM-BSN release's NBSN_SIDD.pth or NBSN_DND.pth to convert real weights")
def test_the_release_nbsn_weights_convert_with_no_flag(tmp_path, capsys):
    """Release weights (the bare state dict its scripts load) convert, told by their keys, and
    export back to the same bits in the same bare format."""
    written = torch2flax.convert(Path(NBSN_PTH), tmp_path / "nbsn")
    assert (written.meta.arch, written.meta.network_config()) == ("nbsn", NBSNConfig())
    assert max(printed_diffs(capsys.readouterr().out).values()) < 1e-3
    flax2torch.export_pth(tmp_path / "nbsn", tmp_path / "back.pth")
    original = torch.load(NBSN_PTH, map_location="cpu", weights_only=True)
    back = torch.load(tmp_path / "back.pth", map_location="cpu", weights_only=True)
    assert list(back) == list(original)
    assert all(torch.equal(back[k], original[k]) for k in original)


TMBSN_NARROW = TMBSNConfig(base_ch=8, blocks=1)


def test_a_release_tmbsn_pth_converts_with_no_flag(official_state_dict, tmp_path, capsys):
    """The bare state dict TM-BSN's benchmark_sidd.py loads, random values at its masked taps."""
    sd = official_state_dict(TMBSN_NARROW)
    assert any(float(v[sd[k.replace(".weight", ".mask")] == 0].abs().max()) > 0 for k, v in sd.items() if k.endswith("conv1.weight"))
    src = write_pth(tmp_path / "TMBSN_SIDD.pth", sd, prefix="", container=False)
    written = torch2flax.convert(src, tmp_path / "out")
    assert (written.meta.arch, written.meta.network_config(), written.meta.train_pd) == ("tmbsn", TMBSN_NARROW, 1)
    printed = dict(re.findall(r"^\s+(hole\d): (\S+)$", capsys.readouterr().out, re.MULTILINE))
    assert sorted(printed) == ["hole0", "hole1", "hole2", "hole5"] and max(map(float, printed.values())) < 1e-3


def test_a_port_that_forgets_the_mask_fails_verification(official_state_dict, monkeypatch):
    """Either the converter's mask (kernels zeroed at the blind taps) or the network's (the mask
    multiplied in at every forward) gives the release's numbers; a port with neither does not."""
    sd = numpy_sd(official_state_dict(TMBSN_NARROW))
    params, cfg = torch_port.params_from_state_dict(sd)
    flat_params = nnx.traversals.flatten_mapping(params)
    for name in tmbsn.masked_convs(cfg):
        path = (*(int(p) if p.isdigit() else p for p in name.split(".")), "kernel")
        flat_params[path] = sd[f"bsn.{name}.weight"].transpose(2, 3, 1, 0)  # the file's, unmasked
    raw = nnx.traversals.unflatten_mapping(flat_params)
    masked = registry.graphdef("tmbsn", cfg)
    assert max(max_abs_diffs(nnx.merge(masked, raw), sd).values()) <= DEFAULT_TOLERANCE
    monkeypatch.setattr(tmbsn, "_masked", lambda cin, cout, rngs: conv(cin, cout, 3, rngs=rngs))
    unmasked = registry.graphdef("tmbsn", cfg)
    assert max(max_abs_diffs(nnx.merge(unmasked, params), sd).values()) <= DEFAULT_TOLERANCE
    assert min(max_abs_diffs(nnx.merge(unmasked, raw), sd).values()) > 100 * DEFAULT_TOLERANCE
