"""`train.py` / `ambsn-train` (ambsn_jax.cli.train): refusals as one line, reruns, closing lines.
Whole runs: tests/train/test_loop.py."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ambsn_jax.cli.train import main
from ambsn_jax.train import config as configlib


def tiny_argv(data_dir: Path, workdir: Path, *extra: str) -> list[str]:
    return [
        "--config", "sidd", "--data-dir", str(data_dir), "--workdir", str(workdir), "--max-steps", "2",
        "--set", "model.base_ch=8", "data.patches=false", "data.crop=20", "data.workers=0",
        "train.batch_size=2", "train.steps_per_epoch=2", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(2):
        assert cv2.imwrite(str(folder / f"img{i}.png"), rng.integers(0, 256, (24, 28, 3), dtype=np.uint8))
    return folder


@pytest.mark.parametrize(
    "case, message",
    [
        # The data layer words these; what matters is one line naming the folder.
        ("missing", "error: {data}: "),
        ("empty", "error: {data}: "),
        ("bad_key", "error: unknown config key model.width; valid keys: "),
        ("no_data", "error: no training data: pass --data-dir"),
        ("bad_config", "error: no config named 'nope'; known configs: apbsn_sidd, demo, distill_demo, distill_fresh_demo, distill_nbsn_demo, distill_nbsn_sidd, distill_sidd, mmbsn_sidd, sidd, sidd_bench, tmbsn_demo, tmbsn_sidd\n"),
        ("bad_flag", "error: unrecognized arguments: --frobnicate (see --help)"),
        ("bad_arch", "error: model.arch 'unet': must be one of ambsn, apbsn, mmbsn"),
    ],
)
def test_bad_input_is_one_error_line(case, message, tmp_path, capsys):
    data = tmp_path / ("missing" if case == "missing" else "empty")
    if case == "empty":
        data.mkdir()
        (data / "notes.txt").write_text("no images here")
    argv = tiny_argv(data, tmp_path / "run")
    if case == "bad_key":
        argv += ["model.width=3"]
    if case == "bad_arch":
        argv += ["model.arch=unet"]
    if case == "no_data":
        argv = ["--config", "sidd", "--workdir", str(tmp_path / "run")]
    if case == "bad_config":
        argv = ["--config", "nope"]
    if case == "bad_flag":
        argv = ["--frobnicate"]
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert err.count("\n") == 1 and err.startswith(message.format(data=data)), err
    assert "Traceback" not in err and out == ""
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_rerun_with_another_config_is_refused(images, tmp_path, capsys):
    workdir = tmp_path / "run"
    configlib.save_resolved(configlib.resolve("sidd", [(["data", "dir"], str(images))]), workdir)
    assert main(tiny_argv(images, workdir)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {workdir}: holds a run with another config (") and "model.base_ch: 128 -> 8" in err


def test_a_run_without_validation_says_where_its_results_are(images, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(tiny_argv(images, workdir, "val.dir=null")) == 0
    out = capsys.readouterr().out
    assert "stopped early at step 2 of 60 (--max-steps)" in out
    assert f"checkpoints: {workdir / 'checkpoints'}; logs: {workdir / 'metrics.jsonl'}, {workdir / 'tb'}" in out
    assert "no validation set was given, so no checkpoint was scored" in out
    assert f"use them: python evaluate.py --ckpt {workdir} --input PHOTOS --output OUT" in out
    assert not (workdir / "eval.json").exists() and sorted(p.name for p in (workdir / "checkpoints").iterdir()) == ["2"]  # once an epoch
