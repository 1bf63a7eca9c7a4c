"""The converter's library (ambsn_jax.convert.torch2flax): convert(), its verification, its names."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from ambsn_jax.checkpoint import torch_port
from ambsn_jax.checkpoint.store import load_checkpoint
from ambsn_jax.convert import flax2torch, torch2flax
from ambsn_jax.convert.reference import twin_of
from ambsn_jax.nets.mmbsn import MMBSNConfig
from ambsn_jax.nets.nbsn import NBSNConfig
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
