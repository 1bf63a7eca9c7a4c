"""`convert/torch2flax.py` end to end: conversions that verify, and every refusal."""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from ambsn_jax import checkpoint, torch_port
from ambsn_jax.masks import blind_spot_mask
from convert import torch2flax

REPO = Path(__file__).resolve().parents[1]
DIFF_LINE = re.compile(r"^\s+(bsn|pd2|pd5): (\S+)$", re.MULTILINE)


def write_pth(path: Path, sd: dict[str, torch.Tensor], prefix: str = "bsn.", container: bool = True) -> Path:
    """Save `sd` (keys `bsn.*`) as the release does, or bare, with `prefix` instead of `bsn.`."""
    sd = {prefix + k.removeprefix("bsn."): v for k, v in sd.items()}
    torch.save({"epoch": 3, "model_weight": {"denoiser": sd}} if container else sd, path)
    return path


def printed_diffs(stdout: str) -> dict[str, float]:
    return {name: float(value) for name, value in DIFF_LINE.findall(stdout)}


def assert_refused(rc: int, stderr: str, out: Path, fragment: str) -> None:
    """One `error:` line naming the problem, a non-zero status, and nothing at or beside --out."""
    assert rc != 0
    assert "Traceback" not in stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert fragment in lines[0]
    assert not out.exists()
    assert not list(out.parent.glob(f".{out.name}.tmp-*"))


class _RunsCode:
    """Unpickling this runs a shell command: what a hostile checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_fixture_checkpoint_is_a_hard_case(official_state_dict):
    sd = official_state_dict(8)
    for branch, kind, k in (("branch_local", "central", 3), ("branch_global", "x", 5)):
        blind = torch.from_numpy(blind_spot_mask(kind, k) == 0)
        assert torch.all(sd[f"bsn.{branch}.head.0.weight"][:, :, blind] != 0)
    assert all(torch.all(v != 0) for k, v in sd.items() if k.endswith(".bias"))


def test_script_converts_verifies_and_records(official_state_dict, reference, assert_parity, tmp_path):
    src = write_pth(tmp_path / "AMBSN.pth", official_state_dict(8))
    run = subprocess.run(
        [sys.executable, str(REPO / "convert" / "torch2flax.py"), str(src)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    diffs = printed_diffs(run.stdout)
    assert set(diffs) == {"bsn", "pd2", "pd5"} and max(diffs.values()) < 1e-4
    out = tmp_path / "AMBSN_orbax"  # the default --out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["AMBSN.pth", "AMBSN_orbax"]

    model, meta = checkpoint.load_model(out)
    assert meta["config"] == model.config.to_dict() and model.config.base_ch == 8
    assert meta["source"] == "AMBSN.pth"
    assert meta["source_sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert meta["tool_version"] and meta["converted"]
    x = np.random.default_rng(1).uniform(0, 255, (1, 11, 14, 3)).astype(np.float32)
    assert_parity(model, reference(8).bsn, x)


def test_prefix_forms_all_strip():
    forms = ["module.bsn.", "bsn.", "module.", ""]
    sd = {f"{p}tail.0.bias": np.zeros(1) for p in forms} | {"head.0.bsn.x": np.zeros(1)}
    stripped = torch_port.strip_prefixes(sd)
    assert sorted(stripped) == ["head.0.bsn.x", "tail.0.bias"]  # not from inside a key


# With `bsn.` in the release container: test_script_converts_verifies_and_records.
@pytest.mark.parametrize("prefix,container", [("module.bsn.", True), ("", False)])
def test_prefixes_and_containers(
    official_state_dict, reference, assert_parity, tmp_path, capsys, prefix, container
):
    src = write_pth(tmp_path / "ckpt.pth", official_state_dict(16), prefix, container)
    out = tmp_path / "out"
    assert torch2flax.main([str(src), "--out", str(out)]) == 0
    assert max(printed_diffs(capsys.readouterr().out).values()) < 1e-4
    model, _ = checkpoint.load_model(out)
    x = np.random.default_rng(2).uniform(0, 255, (1, 9, 12, 3)).astype(np.float32)
    assert_parity(model, reference(16).bsn, x)


@pytest.mark.slow
def test_full_width(official_state_dict, tmp_path, capsys):
    src = write_pth(tmp_path / "AMBSN.pth", official_state_dict(128))
    assert torch2flax.main([str(src)]) == 0
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
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert not marker.exists()
    assert_refused(run.returncode, run.stderr, out, "refused to unpickle")


def _edited(edit: Callable[[dict], None]) -> Callable[[dict], dict]:
    def apply(sd: dict) -> dict:
        sd = dict(sd)
        edit(sd)
        return sd

    return apply


def _shared_copy_differs(sd: dict) -> None:
    sd["bsn.branch_local.conv1_2.0.weight"] = sd["bsn.branch_local.conv1_2.0.weight"] + 1e-3


def _drop_dcb2_block(sd: dict) -> None:
    # A network with 6 DCl blocks per DCB2: well-formed, but not the release's architecture.
    for key in [k for k in sd if k.startswith("bsn.dc_branchl2_")]:
        m = re.match(r"(bsn\.dc_branchl2_\w+\.body\.)(\d+)(\..*)", key)
        i = int(m.group(2))
        value = sd.pop(key)
        if i != 6:
            sd[f"{m.group(1)}{i - (i > 6)}{m.group(3)}"] = value


REFUSED_STATE_DICTS = {
    "missing": (_edited(lambda sd: sd.pop("bsn.tail.2.bias")), "missing keys: tail.2.bias"),
    "unexpected": (
        _edited(lambda sd: sd.update({"bsn.extra.weight": torch.zeros(1)})),
        "unexpected keys: extra.weight",
    ),
    "misshaped": (
        _edited(lambda sd: sd.update({"bsn.tail.0.weight": torch.zeros(8, 16, 1, 1)})),
        "tail.0.weight: shape (8, 16, 1, 1), expected (8, 32, 1, 1)",
    ),
    "wrong_rank": (
        _edited(lambda sd: sd.update({"bsn.tail.0.bias": torch.zeros(8, 1)})),
        "tail.0.bias: shape (8, 1)",
    ),
    "shared_differ": (_edited(_shared_copy_differs), "branch_local.conv1_2.0.weight: differs from"),
    "mask_pattern": (
        _edited(lambda sd: sd.update({"bsn.branch_global.head.0.mask": torch.ones(8, 8, 5, 5)})),
        "branch_global.head.0.mask: not the expected blind-spot pattern",
    ),
    "architecture": (_edited(_drop_dcb2_block), "dcl2_num=6"),
}


@pytest.mark.parametrize("case", REFUSED_STATE_DICTS)
def test_refuses_bad_state_dicts(official_state_dict, tmp_path, capsys, case):
    edit, fragment = REFUSED_STATE_DICTS[case]
    src = write_pth(tmp_path / "ckpt.pth", edit(official_state_dict(8)))
    out = tmp_path / "out"
    rc = torch2flax.main([str(src), "--out", str(out)])
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
}


@pytest.mark.parametrize("case", REFUSED_FILES)
def test_refuses_bad_files(official_state_dict, tmp_path, capsys, case):
    make, fragment = REFUSED_FILES[case]
    src = tmp_path / "ckpt.pth"
    make(src, official_state_dict(8))
    out = tmp_path / "out"
    rc = torch2flax.main([str(src), "--out", str(out)])
    assert not (tmp_path / "pwned").exists()
    assert_refused(rc, capsys.readouterr().err, out, fragment)


def test_existing_out_needs_force(official_state_dict, tmp_path, capsys):
    src = write_pth(tmp_path / "ckpt.pth", official_state_dict(8))
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep").write_text("x")
    assert torch2flax.main([str(src), "--out", str(out)]) != 0
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--force" in err and (out / "keep").exists()
    assert torch2flax.main([str(src), "--out", str(out), "--force"]) == 0
    assert not (out / "keep").exists()
    checkpoint.load_model(out)


def test_failed_verification_leaves_nothing(official_state_dict, tmp_path, capsys, monkeypatch):
    load_model = checkpoint.load_model

    def load_corrupted(path):
        # As if the written checkpoint had lost a bias on the way to disk.
        model, meta = load_model(path)
        bias = model.tail.layers[3].bias
        bias.set_value(bias.get_value() + 0.01)
        return model, meta

    monkeypatch.setattr(checkpoint, "load_model", load_corrupted)
    src = write_pth(tmp_path / "ckpt.pth", official_state_dict(8))
    out = tmp_path / "out"
    rc = torch2flax.main([str(src), "--out", str(out)])
    captured = capsys.readouterr()
    assert min(printed_diffs(captured.out).values()) > 5e-3
    assert_refused(rc, captured.err, out, "verification failed")


def test_crash_while_writing_leaves_nothing(official_state_dict, tmp_path, monkeypatch):
    save_params = checkpoint.save_params

    def save_then_crash(directory, model, meta):
        save_params(directory, model, meta)
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "save_params", save_then_crash)
    src = write_pth(tmp_path / "ckpt.pth", official_state_dict(8))
    with pytest.raises(OSError):
        torch2flax.main([str(src), "--out", str(tmp_path / "out")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]
