"""`convert/torch2flax.py` / `ambsn-convert` (ambsn_jax.cli.convert) end to end: conversions
that verify, for every architecture, and every refusal."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from ambsn_jax.checkpoint import store
from ambsn_jax.checkpoint.store import load_checkpoint, params_of
from ambsn_jax.cli.convert import main
from ambsn_jax.convert import torch2flax
from ambsn_jax.nets import registry
from ambsn_jax.nets.apbsn import APBSNConfig
from ambsn_jax.nets.mmbsn import MMBSN, MMBSNConfig
from tests.helpers import ROOT, assert_refused, printed_diffs, write_pth

# Where the numbers are not the point (conversion plumbing, refusals).
SMALL = {"apbsn": APBSNConfig(base_ch=8), "mmbsn": MMBSNConfig(base_ch=8)}


class _RunsCode:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_script_converts_verifies_and_records(official_state_dict, reference, assert_parity, tmp_path):
    src = write_pth(tmp_path / "AMBSN.pth", official_state_dict(8))
    # The checkout under test, whichever copy of the package is installed (CI installs this one).
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run(
        [sys.executable, str(ROOT / "convert" / "torch2flax.py"), str(src)], capture_output=True, text=True, cwd=tmp_path, env=env
    )
    assert run.returncode == 0, run.stderr
    diffs = printed_diffs(run.stdout)
    assert set(diffs) == {"bsn", "pd2", "pd5"} and max(diffs.values()) < 1e-4
    out = tmp_path / "AMBSN_orbax"  # the default --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AMBSN.pth", "AMBSN_orbax"]
    assert f"converted {src} (ambsn, C=8, " in run.stdout and f"-> {out}" in run.stdout

    loaded = load_checkpoint(out)
    meta = loaded.meta
    assert meta.config == loaded.module().config.to_dict() and loaded.module().config.base_ch == 8
    assert meta.source == "AMBSN.pth" and (meta.train_pd, meta.train_pd_pad) == (5, 2)
    assert meta.source_sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta.tool_version and meta.created
    x = np.random.default_rng(1).uniform(0, 255, (1, 11, 14, 3)).astype(np.float32)
    assert_parity(loaded.module(), reference(8).bsn, x)


# With `bsn.` in the release container: test_script_converts_verifies_and_records.
@pytest.mark.parametrize("prefix,container", [("module.bsn.", True), ("", False)])
def test_prefixes_and_containers(official_state_dict, reference, assert_parity, tmp_path, capsys, prefix, container):
    src = write_pth(tmp_path / "ckpt.pth", official_state_dict(16), prefix, container)
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out)]) == 0
    assert max(printed_diffs(capsys.readouterr().out).values()) < 1e-4
    x = np.random.default_rng(2).uniform(0, 255, (1, 9, 12, 3)).astype(np.float32)
    assert_parity(load_checkpoint(out).module(), reference(16).bsn, x)


@pytest.mark.slow
def test_full_width(official_state_dict, tmp_path, capsys):
    src = write_pth(tmp_path / "AMBSN.pth", official_state_dict(128))
    assert main([str(src)]) == 0
    stdout = capsys.readouterr().out
    assert max(printed_diffs(stdout).values()) < 1e-4
    assert "C=128, 3,837,251 parameters" in stdout


def test_module_run_never_executes_a_hostile_pickle(tmp_path):
    marker = tmp_path / "pwned"
    src = tmp_path / "evil.pth"
    torch.save({"model_weight": {"denoiser": _RunsCode(marker)}}, src)
    out = tmp_path / "out"
    run = subprocess.run(
        [sys.executable, "-m", "convert.torch2flax", str(src), "--out", str(out)],
        capture_output=True, text=True, cwd=ROOT,
    )  # fmt: skip
    assert not marker.exists()
    assert_refused(run.returncode, run.stderr, out, "refused to unpickle")


def adam_state(sd: dict[str, torch.Tensor]) -> dict:
    """A real optimizer state dict, as AP-BSN's checkpoints carry beside the weights."""
    params = [torch.nn.Parameter(v.clone()) for k, v in sd.items() if not k.endswith(".mask")]
    opt = torch.optim.Adam(params, lr=1e-4)
    sum(p.sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


@pytest.mark.parametrize("arch", list(SMALL))
def test_converts_verifies_and_records_the_architecture(official_state_dict, flax_model, tmp_path, capsys, arch):
    sd = official_state_dict(SMALL[arch])
    src = tmp_path / f"{arch}.pth"
    container = {"epoch": 20, "model_weight": {"denoiser": sd}}
    if arch == "apbsn":
        container["optimizer_weight"] = {"denoiser": adam_state(sd)}
    torch.save(container, src)
    out = tmp_path / "out"
    assert main([str(src), "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    diffs = printed_diffs(stdout)
    assert set(diffs) == {"bsn", "pd2", "pd5"} and max(diffs.values()) < 1e-4
    assert f"({arch}, C=8, " in stdout

    loaded = load_checkpoint(out)
    assert loaded.meta.arch == arch and type(loaded.module()) is registry.get(arch).network
    assert loaded.meta.config == SMALL[arch].to_dict()
    # The very parameters of the in-memory conversion, whose numbers the parity tests check.
    jax.tree.map(np.testing.assert_array_equal, loaded.params, params_of(flax_model(SMALL[arch])))


def test_arch_override(official_state_dict, tmp_path, capsys):
    sd = official_state_dict(SMALL["mmbsn"])
    src = write_pth(tmp_path / "ckpt.pth", sd)
    out = tmp_path / "out"
    rc = main([str(src), "--out", str(out), "--arch", "apbsn"])
    assert_refused(rc, capsys.readouterr().err, out, "missing keys: branch1.body.0.bias")
    # Keys of two architectures: detection gives up and --arch decides.
    src = write_pth(tmp_path / "ckpt.pth", sd | {"bsn.branch_local.extra": torch.zeros(1)})
    rc = main([str(src), "--out", str(out)])
    assert_refused(rc, capsys.readouterr().err, out, "cannot tell the architecture: branch keys of AM-BSN and MM-BSN")
    rc = main([str(src), "--out", str(out), "--arch", "mmbsn"])
    assert_refused(rc, capsys.readouterr().err, out, "unexpected keys: branch_local.extra")
    assert main([str(write_pth(src, sd)), "--out", str(out), "--arch", "mmbsn"]) == 0
    assert type(load_checkpoint(out).module()) is MMBSN


def test_unknown_arch_is_refused_before_the_file_is_read(tmp_path, capsys):
    out = tmp_path / "out"
    rc = main([str(tmp_path / "absent.pth"), "--out", str(out), "--arch", "unet"])
    assert_refused(rc, capsys.readouterr().err, out, "unknown architecture 'unet'; known: ambsn, apbsn, mmbsn")


def _edit(sd: dict, **changes: torch.Tensor | None) -> dict:
    """A copy of sd with keys (given with `.` as `__`, without `bsn.`) set, or dropped where None."""
    sd = dict(sd)
    for key, value in changes.items():
        key = "bsn." + key.replace("__", ".")
        if value is None:
            del sd[key]
        else:
            sd[key] = value
    return sd


def _shared_copy_differs(sd: dict) -> dict:
    return _edit(sd, branch_local__conv1_2__0__weight=sd["bsn.branch_local.conv1_2.0.weight"] + 1e-3)


def _drop_dcb2_block(sd: dict) -> dict:
    # A network with 6 DCl blocks per DCB2: well-formed, but not the release's architecture.
    sd = dict(sd)
    for key in [k for k in sd if k.startswith("bsn.dc_branchl2_")]:
        m = re.match(r"(bsn\.dc_branchl2_\w+\.body\.)(\d+)(\..*)", key)
        i = int(m.group(2))
        value = sd.pop(key)
        if i != 6:
            sd[f"{m.group(1)}{i - (i > 6)}{m.group(3)}"] = value
    return sd


# (network, edit, fragment of the one error line)
REFUSED_STATE_DICTS = {
    ("ambsn", "missing"): (lambda sd: _edit(sd, tail__2__bias=None), "missing keys: tail.2.bias"),
    ("ambsn", "unexpected"): (lambda sd: _edit(sd, extra__weight=torch.zeros(1)), "unexpected keys: extra.weight"),
    ("ambsn", "misshaped"): (
        lambda sd: _edit(sd, tail__0__weight=torch.zeros(8, 16, 1, 1)),
        "tail.0.weight: shape (8, 16, 1, 1), expected (8, 32, 1, 1)",
    ),
    ("ambsn", "wrong_rank"): (lambda sd: _edit(sd, tail__0__bias=torch.zeros(8, 1)), "tail.0.bias: shape (8, 1)"),
    ("ambsn", "shared_differ"): (_shared_copy_differs, "branch_local.conv1_2.0.weight: differs from"),
    ("ambsn", "mask_pattern"): (
        lambda sd: _edit(sd, branch_global__head__0__mask=torch.ones(8, 8, 5, 5)),
        "branch_global.head.0.mask: not the expected blind-spot pattern",
    ),
    ("ambsn", "architecture"): (_drop_dcb2_block, "dcl2_num=6"),
    ("apbsn", "missing"): (lambda sd: _edit(sd, branch2__body__15__bias=None), "missing keys: branch2.body.15.bias"),
    ("mmbsn", "missing"): (
        lambda sd: _edit(sd, branch6_2__conv1_3__0__bias=None), "missing keys: branch6_2.conv1_3.0.bias",
    ),
    ("apbsn", "unexpected"): (
        lambda sd: _edit(sd, branch1__body__16__weight=torch.zeros(1)), "unexpected keys: branch1.body.16.weight",
    ),
    ("mmbsn", "unexpected"): (
        # The branch of a kind that does not exist (N = 11).
        lambda sd: _edit(sd, branch11_1__head__0__weight=torch.zeros(1)),
        "unexpected keys: branch11_1.head.0.weight",
    ),
    ("apbsn", "misshaped"): (
        lambda sd: _edit(sd, branch1__body__0__weight=torch.zeros(8, 8, 5, 5)),
        "branch1.body.0.weight: shape (8, 8, 5, 5), expected (8, 8, 3, 3)",
    ),
    ("mmbsn", "misshaped"): (
        lambda sd: _edit(sd, conv2_1__0__weight=torch.zeros(8, 8, 1, 1)),
        "conv2_1.0.weight: shape (8, 8, 1, 1), expected (8, 16, 1, 1)",
    ),
    ("mmbsn", "shared_differ"): (
        lambda sd: _edit(sd, conv2_2__0__bias=sd["bsn.conv2_2.0.bias"] + 1e-3), "conv2_2.0.bias: differs from"
    ),
    ("apbsn", "mask_pattern"): (
        lambda sd: _edit(sd, branch2__body__0__mask=torch.ones(8, 8, 5, 5)),
        "branch2.body.0.mask: not the expected blind-spot pattern",
    ),
    ("mmbsn", "mask_pattern"): (
        # A centre mask where the a45 branch needs its anti-diagonal.
        lambda sd: _edit(sd, branch6_1__head__0__mask=sd["bsn.branch1_1.head.0.mask"]),
        "branch6_1.head.0.mask: not the expected blind-spot pattern",
    ),
}
NETWORKS = {"ambsn": 8, **SMALL}


@pytest.mark.parametrize("arch,case", list(REFUSED_STATE_DICTS))
def test_refuses_bad_state_dicts(official_state_dict, tmp_path, capsys, arch, case):
    edit, fragment = REFUSED_STATE_DICTS[arch, case]
    src = write_pth(tmp_path / "ckpt.pth", edit(official_state_dict(NETWORKS[arch])))
    out = tmp_path / "out"
    rc = main([str(src), "--out", str(out)])
    assert_refused(rc, capsys.readouterr().err, out, fragment)


def _truncated(path: Path, sd: dict) -> None:
    write_pth(path, sd)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _hostile_raw_pickle(path: Path, sd: dict) -> None:
    # The legacy (non-zip) format goes through another torch.load path.
    with open(path, "wb") as f:
        pickle.dump(_RunsCode(path.with_name("pwned")), f)


REFUSED_FILES = {
    "truncated": (_truncated, "ckpt.pth: not a readable PyTorch checkpoint"),
    # Which torch reader rejects junk depends on its first byte: either message fits.
    "text": (lambda path, sd: path.write_text("name,value\nlr,2e-4\n"), "ckpt.pth: not a"),
    "empty": (lambda path, sd: path.write_bytes(b""), "ckpt.pth: not a readable PyTorch checkpoint"),
    "hostile_legacy_pickle": (_hostile_raw_pickle, "refused to unpickle"),
    "no_state_dict": (lambda path, sd: torch.save([1, 2], path), "holds no state dict"),
    "not_tensors": (lambda path, sd: torch.save({"a": 1}, path), "entries that are not named tensors: a"),
    "missing": (lambda path, sd: None, "ckpt.pth: no such file"),
}


@pytest.mark.parametrize("case", REFUSED_FILES)
def test_refuses_bad_files(official_state_dict, tmp_path, capsys, case):
    make, fragment = REFUSED_FILES[case]
    src = tmp_path / "ckpt.pth"
    make(src, official_state_dict(8))
    out = tmp_path / "out"
    rc = main([str(src), "--out", str(out)])
    assert not (tmp_path / "pwned").exists()
    assert_refused(rc, capsys.readouterr().err, out, fragment)


def test_existing_out_needs_force(official_state_dict, tmp_path, capsys):
    src = write_pth(tmp_path / "ckpt.pth", official_state_dict(8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    assert main([str(src), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and (out / "keep").exists()
    assert main([str(src), "--out", str(out), "--force"]) == 0
    assert not (out / "keep").exists()
    assert load_checkpoint(out).meta.source == "ckpt.pth"


def test_failed_verification_leaves_nothing(official_state_dict, tmp_path, capsys, monkeypatch):
    load = store.load_checkpoint

    def load_corrupted(path, step=None):
        # As if the written checkpoint had lost a bias on the way to disk.
        loaded = load(path, step)
        params = jax.tree.map(lambda v: v, loaded.params)
        params["tail"]["layers"][3]["bias"] = params["tail"]["layers"][3]["bias"] + 0.01
        return store.Checkpoint(params, loaded.meta, loaded.path, loaded.step)

    monkeypatch.setattr(torch2flax, "load_checkpoint", load_corrupted)
    src = write_pth(tmp_path / "ckpt.pth", official_state_dict(8))
    out = tmp_path / "out"
    rc = main([str(src), "--out", str(out)])
    captured = capsys.readouterr()
    assert min(printed_diffs(captured.out).values()) > 5e-3
    assert_refused(rc, captured.err, out, "verification failed")


def test_crash_while_writing_leaves_nothing(official_state_dict, tmp_path, capsys, monkeypatch):
    save = store.save_params

    def save_then_crash(directory, params, meta, step=0):
        save(directory, params, meta, step)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch2flax, "save_params", save_then_crash)
    src = write_pth(tmp_path / "ckpt.pth", official_state_dict(8))
    out = tmp_path / "out"
    rc = main([str(src), "--out", str(out)])
    assert_refused(rc, capsys.readouterr().err, out, "out: cannot write it (No space left on device)")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
