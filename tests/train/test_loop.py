"""The training loop (ambsn_jax.train.loop): whole runs on one or several devices (several
processes: tests/cli/test_launch.py), resume after a kill, validation and the best checkpoint,
fine-tuning, the PD a run trains at.

Runs use a tiny network (C = 8) on 20 x 20 crops of small random images, so that compiling
dominates and every run takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import yaml

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint.store import load_checkpoint, params_of, save_args
from ambsn_jax.cli.train import main
from ambsn_jax.checkpoint import torch_port
from ambsn_jax.data.sidd import save_blocks_mat
from ambsn_jax.nets import registry
from ambsn_jax.nets.ambsn import AMBSNConfig
from ambsn_jax.train import config as configlib
from ambsn_jax.train.checkpoints import checkpoint_manager
from ambsn_jax.train.loop import training_meta
from ambsn_jax.train.runlog import METRICS_FILE
from ambsn_jax.train.validation import EVAL_FILE
from tests.helpers import ROOT, numpy_sd, write_images

STEPS = 12


def tiny_argv(data_dir: Path, workdir: Path, *extra: str, workers: int = 0) -> list[str]:
    return [
        "--config", "sidd", "--data-dir", str(data_dir), "--workdir", str(workdir),
        "--max-steps", str(STEPS), "--save-every", "3", "--seed", "7",
        "--set", "model.base_ch=8", "data.patches=false", "data.crop=20", f"data.workers={workers}",
        "train.batch_size=4", "train.steps_per_epoch=4", "optim.lr=1e-2", "optim.decay_every_epochs=2",
        "checkpoint.keep=2", "log.every=1", "train.pd_shuffle=true", *extra,
    ]  # fmt: skip


def losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    steps = [line["step"] for line in lines if "loss" in line]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def living(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def living_children(pid: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [child for child in pids if (stat := _stat(child)) and int(stat[1]) == pid and stat[0] != "Z"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 6)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(images, tmp_path_factory) -> dict[int, float]:
    """Per-step losses of the tiny run, in this process on one device, never stopped."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert main(tiny_argv(images, workdir)) == 0
    result = losses(workdir)
    assert sorted(result) == list(range(1, STEPS + 1))
    return result


def test_kill_and_resume_equals_uninterrupted(images, uninterrupted, tmp_path, capsys):
    """SIGKILL mid-run (data read by a worker process), rerun: the same per-step losses."""
    workdir = tmp_path / "killed"
    argv = tiny_argv(images, workdir, workers=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        metrics = workdir / METRICS_FILE
        if metrics.is_file() and any(json.loads(line)["step"] >= 7 for line in metrics.read_text().splitlines()):
            workers = living_children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert max(losses(workdir)) < STEPS
    # The data worker notices and ends too, rather than waiting forever to hand over a batch.
    assert workers
    deadline = time.time() + 30
    while any(living(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    leftover = [pid for pid in workers if living(pid)]
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover

    capsys.readouterr()
    assert main(argv) == 0
    assert "resuming at step " in capsys.readouterr().out
    got = losses(workdir)
    assert sorted(got) == sorted(uninterrupted)
    for step in sorted(got):
        assert abs(got[step] - uninterrupted[step]) <= 1e-5 * abs(uninterrupted[step]), step


def test_sidd_config_on_a_fake_sidd_medium_tree(tmp_path, rng, capsys):
    """`--config sidd` cuts patches of the NOISY files only, trains, validates, keeps the best
    checkpoint, and writes eval.json from the checkpoint evaluate.py would load."""
    data = tmp_path / "SIDD_Medium_Srgb" / "Data"
    for scene in ("0001_001_S6_00100_00060_3200_L", "0002_001_IP_00800_00400_5500_N"):
        write_images(data / scene, 2, size=(70, 90), seed=len(scene))
        for i, shot in enumerate(("010", "011")):
            (data / scene / f"img{i:02d}.png").rename(data / scene / f"{scene}_NOISY_SRGB_{shot}.PNG")
            # Not a readable image: training fails if it ever opens ground truth.
            (data / scene / f"{scene}_GT_SRGB_{shot}.PNG").write_bytes(b"ground truth must not be read")
    val = tmp_path / "val"
    val.mkdir()
    clean = rng.integers(0, 256, (1, 2, 24, 24, 3), dtype=np.uint8)
    noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
    save_blocks_mat(val / "ValidationNoisyBlocksSrgb.mat", noisy, "ValidationNoisyBlocksSrgb")
    save_blocks_mat(val / "ValidationGtBlocksSrgb.mat", clean, "ValidationGtBlocksSrgb")
    workdir = tmp_path / "run"
    argv = [
        "--config", "sidd", "--data-dir", str(tmp_path / "SIDD_Medium_Srgb"), "--workdir", str(workdir),
        "--max-steps", "2", "--save-every", "1",
        "--set", "model.base_ch=8", "data.crop=40", "data.patch_size=64", "data.patch_stride=48",
        "data.workers=0", "train.batch_size=4", f"val.dir={val}", "val.batch_size=2", "checkpoint.keep=1",
    ]  # fmt: skip
    assert main(argv) == 0

    patches = sorted((workdir / "patches").rglob("*.png"))
    assert len(patches) == 4 * 4 and all("_NOISY_SRGB_" in p.name for p in patches)
    saved = yaml.safe_load((workdir / "config.yaml").read_text())
    assert saved["data"]["crop"] == 40 and saved["optim"]["lr"] == 2e-4 and saved["train"]["epochs"] == 30
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    val_lines = [line for line in lines if "psnr" in line]
    assert [line["step"] for line in val_lines] == [1, 2] and all(0 <= line["ssim"] < 1 for line in val_lines)
    # Equal PSNRs rank by step, the later first (orbax sorts stably).
    best = max(val_lines, key=lambda line: (line["psnr"], line["step"]))["step"]
    with checkpoint_manager(workdir, keep=1, track_best=True) as mngr:
        assert mngr.all_steps() == sorted({best, 2}) and mngr.best_step() == best
    loaded = load_checkpoint(workdir)
    assert loaded.step == best and loaded.meta.config["base_ch"] == 8 and loaded.meta.train_pd == 5
    assert loaded.meta == training_meta(configlib.resolve("sidd", [(["data", "dir"], "x"), (["model", "base_ch"], 8)]))
    report = json.loads((workdir / EVAL_FILE).read_text())
    assert {"psnr", "ssim", "noisy_psnr", "noisy_ssim", "blocks", "checkpoint", "options", "training"} <= set(report)
    assert report["checkpoint"]["path"] == str(workdir / "checkpoints") and report["checkpoint"]["step"] == best
    assert report["training"] == {"steps": 2, "of_steps": 30 * 4, "stopped_early": True}
    assert len(report["blocks"]) == 2 and report["options"]["pd_a"] == 5 and report["options"]["R3"]
    assert report["psnr"] == pytest.approx(next(line["psnr"] for line in val_lines if line["step"] == best))
    out = capsys.readouterr().out
    assert f"step {best} (best by validation PSNR): 2 blocks of {val}: PSNR " in out
    assert "stopped early at step 2 of 120 (--max-steps)" in out
    assert f"use them: python evaluate.py --ckpt {workdir} --input PHOTOS --output OUT" in out


def test_checkpoints_keep_the_latest_and_the_best(tmp_path):
    """keep=2: the two latest steps survive, and the best by PSNR beside them, which
    `load_checkpoint` (and so evaluate.py) picks from the workdir."""
    params = params_of(registry.build("ambsn", AMBSNConfig(base_ch=8)))
    meta = CheckpointMeta.for_network("ambsn", AMBSNConfig(base_ch=8), train_pd=5, train_pd_pad=2, source="test")
    with checkpoint_manager(tmp_path, keep=2, track_best=True) as mngr:
        for step, psnr in enumerate([20.0, 30.0, 25.0, 21.0, 22.0], start=1):
            tagged = dataclasses.replace(meta, note=f"step {step}")
            mngr.save(step, args=ocp.args.Composite(**save_args(params, tagged)), metrics={"psnr": psnr, "ssim": 0.5})
        mngr.wait_until_finished()
        assert mngr.all_steps() == [2, 4, 5] and mngr.best_step() == 2
    loaded = load_checkpoint(tmp_path)
    assert loaded.step == 2 and loaded.meta.note == "step 2"


def test_init_fine_tunes_a_converted_checkpoint(images, official_state_dict, tmp_path, capsys):
    pth = tmp_path / "init.pth"
    torch.save({"epoch": 1, "model_weight": {"denoiser": official_state_dict(8)}}, pth)
    # A vanishing learning rate: Adam leaves the parameters where --init put them. With a moving
    # average, which starts from them too (the served weights): a copy of its own, which the step donates.
    assert main(tiny_argv(images, tmp_path / "run", "optim.lr=1e-30", "optim.ema_decay=0.9", "--max-steps", "2", "--init", str(pth))) == 0
    tuned = load_checkpoint(tmp_path / "run")
    start, _ = torch_port.params_from_state_dict(numpy_sd(official_state_dict(8)))
    jax.tree.map(partial(np.testing.assert_allclose, rtol=1e-6), tuned.params, start)
    capsys.readouterr()  # the first run's progress bar

    assert main(tiny_argv(images, tmp_path / "wide", "model.base_ch=16", "--init", str(pth))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {pth}: holds ambsn") and "base_ch" in err[0]


def test_training_meta_records_the_network_and_its_pd():
    cfg = configlib.resolve("sidd", [(["data", "dir"], "x"), (["model", "arch"], "mmbsn"), (["model", "base_ch"], 8),
                                     (["train", "pd"], 4), (["train", "pd_pad"], 1), (["data", "crop"], 40)])  # fmt: skip
    meta = training_meta(cfg)
    assert (meta.arch, meta.train_pd, meta.train_pd_pad, meta.source) == ("mmbsn", 4, 1, "config sidd")
    assert meta.network_config() == registry.network_config("mmbsn", {"base_ch": 8})


def test_a_run_at_another_pd_is_evaluated_and_recorded_at_it(images, val_dir, tmp_path, capsys):
    """`--set train.pd=4`: the run trains at PD 4, its checkpoint says so, and its closing
    evaluation fuses PD 2 with PD 4, as evaluate.py then does for it."""
    workdir = tmp_path / "pd4"
    argv = tiny_argv(images, workdir, "train.pd=4", f"val.dir={val_dir}", "val.batch_size=2", "--max-steps", "1")
    assert main(argv) == 0
    loaded = load_checkpoint(workdir)
    assert (loaded.step, loaded.meta.train_pd, loaded.meta.train_pd_pad) == (1, 4, 2)
    report = json.loads((workdir / EVAL_FILE).read_text())
    assert report["options"]["pd_a"] == 4 and report["options"]["pd_pad"] == 2 and report["options"]["tta"] is True
    assert report["checkpoint"]["train_pd"] == 4 and report["checkpoint"]["step"] == 1
    assert len(report["blocks"]) == 4 and report["training"]["stopped_early"] is True
    assert "step 1 (best by validation PSNR)" in capsys.readouterr().out


def test_tmbsn_demo_trains_saves_and_resumes(images, val_dir, tmp_path, capsys):
    """`--config tmbsn_demo`, narrowed: two steps, a checkpoint whose closing evaluation is
    TM-BSN's benchmark pass, then a rerun that resumes there and goes on to four."""
    workdir = tmp_path / "tmbsn"
    argv = [
        "--config", "tmbsn_demo", "--data-dir", str(images), "--workdir", str(workdir), "--save-every", "2",
        "--set", "model.base_ch=4", "model.blocks=1", "data.patches=false", "data.crop=16", "data.workers=0",
        f"val.dir={val_dir}", "val.batch_size=2", "log.every=1",
    ]  # fmt: skip
    assert main([*argv, "--max-steps", "2"]) == 0
    first = load_checkpoint(workdir)
    assert (first.step, first.meta.arch, first.meta.network_config().blocks, first.meta.train_pd) == (2, "tmbsn", 1, 1)
    report = json.loads((workdir / EVAL_FILE).read_text())
    assert (report["options"]["h"], report["options"]["pad"], report["options"]["pd_pad"]) == (2, 16, 0)
    capsys.readouterr()
    assert main([*argv, "--max-steps", "4"]) == 0
    assert "resuming at step 2" in capsys.readouterr().out
    assert sorted(losses(workdir)) == [1, 2, 3, 4] and load_checkpoint(workdir).step == 4
