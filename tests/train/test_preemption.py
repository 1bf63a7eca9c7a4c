"""Stopping training when the cluster asks (ambsn_jax.train.preemption): SIGTERM checkpoints
the step in flight and exits 143, the rerun equals an uninterrupted run; a second signal exits
at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from ambsn_jax.cli.train import main
from ambsn_jax.train.checkpoints import checkpoint_manager
from ambsn_jax.train.runlog import METRICS_FILE
from tests.helpers import ROOT, write_png

STEPS = 12
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}


def tiny(images, workdir, workers=0):
    return ["--config", "demo", "--data-dir", str(images), "--workdir", str(workdir), "--max-steps", str(STEPS),
            "--save-every", "4", "--seed", "3", "--set", "model.base_ch=4", "data.patches=false", "data.crop=20",
            f"data.workers={workers}", "train.batch_size=2", "train.steps_per_epoch=6", "val.dir=null", "log.every=1"]  # fmt: skip


def losses(workdir):
    out = {}
    for line in (workdir / METRICS_FILE).read_text().splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        out[record["step"]] = record["loss"]
    return out


def test_sigterm_checkpoints_the_step_and_the_rerun_equals_uninterrupted(tmp_path, capsys):
    images = tmp_path / "images"
    for i in range(4):
        write_png(images / f"img{i}.png", (24, 28, 3), seed=i)
    # The uninterrupted run first, in-process: the subprocess below then finds its compiled
    # step in the session's compilation cache (the data workers' count changes no number).
    uninterrupted = tmp_path / "whole"
    assert main(tiny(images, uninterrupted)) == 0
    capsys.readouterr()
    workdir = tmp_path / "preempted"
    log_path = tmp_path / "preempted.log"
    with log_path.open("w") as log:
        # Its own session: the signal goes to the whole group, trainer and Grain worker, as schedulers send it.
        proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *tiny(images, workdir, workers=1)],
                                cwd=ROOT, env=ENV, stdout=log, stderr=log, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            metrics = workdir / METRICS_FILE
            if metrics.is_file() and len(metrics.read_text().splitlines()) >= 2:
                # Frozen first, so that the signal lands mid-run however fast the steps go.
                os.killpg(proc.pid, signal.SIGSTOP)
                os.killpg(proc.pid, signal.SIGTERM)
                os.killpg(proc.pid, signal.SIGCONT)
                break
            time.sleep(0.005)
        code = proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    text = log_path.read_text()
    assert code == 128 + signal.SIGTERM, text[-3000:]
    stops = [line for line in text.replace("\r", "\n").splitlines() if "stopped at step" in line]
    assert len(stops) == 1 and stops[0].endswith("rerun the same command to resume"), text[-3000:]
    stopped = int(stops[0].split("stopped at step ")[1].split(",")[0])
    assert 2 <= stopped < STEPS
    with checkpoint_manager(workdir, keep=3, track_best=False) as mngr:
        assert mngr.latest_step() == stopped
    assert max(losses(workdir)) == stopped

    assert main(tiny(images, workdir, workers=1)) == 0
    assert f"resuming at step {stopped} " in capsys.readouterr().out
    got, want = losses(workdir), losses(uninterrupted)
    assert sorted(got) == sorted(want) == list(range(1, STEPS + 1))
    assert all(got[s] == pytest.approx(want[s], rel=1e-5) for s in want)


def test_a_second_signal_exits_at_once():
    code = (
        "import os, signal, time\n"
        "from ambsn_jax.mesh import make_mesh\n"
        "from ambsn_jax.train.preemption import Preemption\n"
        "with Preemption(make_mesh()) as p:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    assert p.stop_now() and p.signum == signal.SIGINT\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "    time.sleep(60)\n"
        "raise SystemExit(5)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 128 + signal.SIGINT, proc.stderr
    assert "SIGINT: finishing this step and checkpointing it" in proc.stderr
    assert "SIGINT again: exiting now, without a checkpoint" in proc.stderr
