"""Checkpoints back to the release's .pth: keys, container, bits, verification, refusals."""

from __future__ import annotations

import os
import re
from pathlib import Path

import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT, load_checkpoint, params_of, save_params
from ambsn_jax.cli.convert import main_flax2torch
from ambsn_jax.checkpoint import torch_port
from ambsn_jax.convert import flax2torch
from ambsn_jax.convert.reference import ReleaseDenoiser, twin_of
from ambsn_jax.nets import registry
from ambsn_jax.nets.ambsn import AMBSNConfig
from ambsn_jax.nets.apbsn import APBSNConfig
from ambsn_jax.nets.mmbsn import MMBSNConfig
from ambsn_jax.nets.nbsn import NBSNConfig
from ambsn_jax.nets.student import StudentConfig
from ambsn_jax.nets.tmbsn import TMBSNConfig
from tests.helpers import TMBSN_RELEASE_ENV, printed_diffs, tmbsn_release, write_pth

EXPORTED = {
    "ambsn": AMBSNConfig(base_ch=8), "apbsn": APBSNConfig(base_ch=8), "mmbsn": MMBSNConfig(base_ch=8),
    "student": StudentConfig(base_ch=4, depth=2),
}  # fmt: skip
# The release's MM-BSN ('o_a45' above) and other mask strings, the "c" / "r" quirk included.
ROUND_TRIPS = {
    **EXPORTED,
    "mmbsn_o_fsz": MMBSNConfig(base_ch=8, dcl1_num=1, dcl2_num=1, mask_type="o_fsz"),
    "mmbsn_c_r_sz": MMBSNConfig(base_ch=8, dcl1_num=1, dcl2_num=1, mask_type="c_r_sz"),
    "mmbsn_hui_cha_fcha_a135": MMBSNConfig(base_ch=8, dcl1_num=1, dcl2_num=1, mask_type="hui_cha_fcha_a135"),
}


def release_keys(config) -> dict[str, tuple[int, ...]]:
    """Key -> shape of the release's Denoiser state dict for a network of `config`."""
    ref = ReleaseDenoiser(bsn=twin_of(config))
    return {k: tuple(v.shape) for k, v in ref.state_dict().items()}


def load_release(path: Path) -> dict[str, torch.Tensor]:
    obj = torch.load(path, map_location="cpu", weights_only=True)
    assert set(obj) == {"model_weight"} and set(obj["model_weight"]) == {"denoiser"}
    return obj["model_weight"]["denoiser"]


def assert_release_file(path: Path, config) -> None:
    """The file holds exactly the release's keys, float32 and contiguous, and loads strictly."""
    sd = load_release(path)
    assert {k: tuple(v.shape) for k, v in sd.items()} == release_keys(config)
    assert all(v.dtype == torch.float32 and v.is_contiguous() for v in sd.values())
    ReleaseDenoiser(bsn=twin_of(config)).load_state_dict(sd, strict=True)


def test_demo_checkpoint_exports_and_verifies(tmp_path, capsys):
    out = tmp_path / "demo.pth"
    assert main_flax2torch([str(DEMO_CHECKPOINT), "--out", str(out)]) == 0
    diffs = printed_diffs(capsys.readouterr().out)
    assert set(diffs) == {"bsn", "pd2", "pd5"} and max(diffs.values()) < 1e-3
    demo = load_checkpoint(DEMO_CHECKPOINT)
    config = demo.meta.network_config()
    assert_release_file(out, config)
    sd = load_release(out)
    # A network trained here keeps non-zero init values at its blind taps; the file has zeros.
    kernel = np.asarray(demo.params["branch_global"]["masked"]["kernel"])
    assert np.any(kernel[0, 0] != 0)
    blind = registry.of_config(config).mask_map(config)["branch_global.head.0.mask"][1] == 0
    assert torch.all(sd["bsn.branch_global.head.0.weight"][:, :, blind] == 0)
    tail = np.asarray(demo.params["tail"]["layers"][0]["kernel"]).transpose(3, 2, 0, 1)
    np.testing.assert_array_equal(sd["bsn.tail.0.weight"].numpy(), tail)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["demo.pth"]


@pytest.mark.parametrize("arch", EXPORTED)
def test_official_checkpoints_export_and_verify(official_state_dict, tmp_path, capsys, arch):
    src = write_pth(tmp_path / "in.pth", official_state_dict(EXPORTED[arch]))
    out = tmp_path / "out.pth"
    exported = flax2torch.export_pth(src, out)
    assert exported.meta.arch == arch
    assert max(printed_diffs(capsys.readouterr().out).values()) < 1e-4
    assert_release_file(out, EXPORTED[arch])


@pytest.mark.parametrize("name", ROUND_TRIPS)
def test_round_trip_is_bit_for_bit(official_state_dict, name):
    cfg = ROUND_TRIPS[name]
    original = {k: v.numpy() for k, v in official_state_dict(cfg).items()}
    params, config = torch_port.params_from_state_dict(original)
    back = flax2torch.params_to_state_dict(params, config)
    assert set(back) == set(original)
    mask_map = registry.of_config(cfg).mask_map(cfg)
    masks = {f"bsn.{k.replace('.mask', '.weight')}": m for k, (_, m) in mask_map.items()}
    blind_convs = {MMBSNConfig: 2 * len(cfg.kinds()) if isinstance(cfg, MMBSNConfig) else 0, StudentConfig: 0}
    assert len(masks) == blind_convs.get(type(cfg), 2)
    for key, want in original.items():
        got = back[key]
        assert got.dtype == np.float32 and got.flags.c_contiguous and got.shape == want.shape, key
        if key in masks:
            seen = np.broadcast_to(masks[key] != 0, want.shape)
            # The fixture's blind taps are non-zero (saved before any forward): they come back as +0.
            assert np.all(want[~seen] != 0) and np.all(got[~seen] == 0) and not np.signbit(got[~seen]).any()
            got, want = got[seen], want[seen]
        assert got.tobytes() == want.tobytes(), key


def test_refuses_an_unknown_architecture(flax_model, tmp_path, capsys):
    ckpt = tmp_path / "ckpt"
    model = flax_model(8)
    meta = CheckpointMeta.for_release("ambsn", model.config, source="test")
    save_params(ckpt, params_of(model), meta)
    (metadata,) = ckpt.glob("0/meta/metadata")
    metadata.write_text(metadata.read_text().replace('"ambsn"', '"unet"'))
    out = tmp_path / "out.pth"
    assert main_flax2torch([str(ckpt), "--out", str(out)]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {ckpt}") and "'unet'" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_existing_out_needs_force(tmp_path, capsys):
    out = tmp_path / "out.pth"
    out.write_bytes(b"keep")
    assert main_flax2torch([str(DEMO_CHECKPOINT), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and out.read_bytes() == b"keep"
    assert main_flax2torch([str(DEMO_CHECKPOINT), "--out", str(out), "--force"]) == 0
    assert len(load_release(out)) == len(release_keys(load_checkpoint(DEMO_CHECKPOINT).meta.network_config()))


def test_failed_verification_writes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(flax2torch, "max_abs_diffs", lambda model, sd: {"bsn": 0.5, "pd2": float("nan")})
    assert main_flax2torch([str(DEMO_CHECKPOINT), "--out", str(tmp_path / "out.pth")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "verification failed: bsn by 5.000e-01, pd2 by nan" in err
    assert list(tmp_path.iterdir()) == []


def test_nbsn_exports_the_bare_state_dict_its_release_loads(official_state_dict, tmp_path, capsys):
    """The NBSN release's scripts call `load_state_dict(torch.load(f))` on the network itself:
    the file is that state dict, keys without `bsn.`, and holds the same bits as the source."""
    cfg = NBSNConfig(base_ch=4, depth=2)
    src = write_pth(tmp_path / "in.pth", official_state_dict(cfg), prefix="", container=False)
    out = tmp_path / "out.pth"
    assert flax2torch.export_pth(src, out).meta.arch == "nbsn"
    # 1e-3: the random-init U-Net's outputs reach thousands (0..255 scale), as the student's test
    assert max(printed_diffs(capsys.readouterr().out).values()) < 1e-3
    sd = torch.load(out, map_location="cpu", weights_only=True)
    assert list(sd) == list(twin_of(cfg).state_dict())
    twin_of(cfg).load_state_dict(sd, strict=True)
    for key, value in official_state_dict(cfg).items():
        assert sd[key.removeprefix("bsn.")].numpy().tobytes() == value.numpy().tobytes(), key


def test_tmbsn_exports_the_bare_state_dict_its_release_loads(official_state_dict, tmp_path, capsys):
    """Into the twin (and, with AMBSN_TMBSN_RELEASE, the release's own code) the file loads
    strictly and gives the port's pixels; the masked taps are zeros, the rest bit for bit."""
    cfg = TMBSNConfig(base_ch=8, blocks=1)
    sd = official_state_dict(cfg)
    src = write_pth(tmp_path / "in.pth", sd, prefix="", container=False)
    out = tmp_path / "out.pth"
    exported = flax2torch.export_pth(src, out)
    printed = dict(re.findall(r"^\s+(hole\d): (\S+)$", capsys.readouterr().out, re.MULTILINE))
    assert sorted(printed) == ["hole0", "hole1", "hole2", "hole5"] and max(map(float, printed.values())) < 1e-3
    written = torch.load(out, map_location="cpu", weights_only=True)
    assert list(written) == [k.removeprefix("bsn.") for k in sd]
    for key, value in written.items():
        want = sd[f"bsn.{key}"]
        if key.endswith(".weight") and key.replace(".weight", ".mask") in written:
            want = want * written[key.replace(".weight", ".mask")]
        assert value.dtype == torch.float32 and torch.equal(value, want), key
    x = np.random.default_rng(0).uniform(0, 255, (1, 16, 16, 3)).astype(np.float32)
    port = np.asarray(exported.module()(jnp.asarray(x), hole=2))
    nets = [twin_of(cfg)]
    if os.environ.get(TMBSN_RELEASE_ENV):
        nets.append(tmbsn_release().TMBSN(in_channels=3, feat_channels=8, block_nums=1))
    for net in nets:
        net.load_state_dict(written, strict=True)
        with torch.no_grad():
            pixels = 255.0 * net.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2)) / 255.0, 2)
        np.testing.assert_allclose(pixels.numpy().transpose(0, 2, 3, 1), port, atol=1e-3)
