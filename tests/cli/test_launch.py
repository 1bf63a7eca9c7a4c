"""`ambsn-launch` (ambsn_jax.cli.launch) and multi-process training with real processes: 2
processes x 2 CPU devices train like 1 process x 4, a SIGTERM to one process stops both at the
same step, a kill -9 of one ends the other within the peer timeout, and the resumed run ends
bitwise equal to the uninterrupted one.

One run is chained through the faults (SIGTERM, resume, kill -9, resume), so that the whole
story costs three launches; module fixtures share them between the tests.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from ambsn_jax import distributed
from ambsn_jax.checkpoint.store import load_checkpoint
from ambsn_jax.cli import launch
from ambsn_jax.train.runlog import METRICS_FILE
from tests.helpers import ROOT, launched_pid

STEPS = 10
PEER_TIMEOUT = 10


def train_argv(workdir: Path) -> list[str]:
    return ["train.py", "--config", "demo", "--workdir", str(workdir), "--max-steps", str(STEPS), "--save-every", "2",
            "--seed", "3", "--peer-timeout", str(PEER_TIMEOUT), "--set", "model.base_ch=4", "data.crop=20",
            "data.workers=0", "train.batch_size=4", "train.steps_per_epoch=10", "val.dir=null", "log.every=1"]  # fmt: skip


def start(processes: int, devices: int, workdir: Path, log: Path) -> subprocess.Popen:
    argv = ["--processes", str(processes), "--devices-per-process", str(devices), "--", *train_argv(workdir)]
    with log.open("w") as out:
        return subprocess.Popen([sys.executable, "-m", "ambsn_jax.cli.launch", *argv], cwd=ROOT,
                                env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=out)  # fmt: skip


def logged_steps(workdir: Path) -> int:
    try:
        return len((workdir / METRICS_FILE).read_text().splitlines())
    except OSError:
        return 0


def signal_once(proc: subprocess.Popen, workdir: Path, after_steps: int, signum: int) -> float:
    """Sends `signum` to launched process 1 once `after_steps` steps are logged; returns when."""
    deadline = time.monotonic() + 400
    while logged_steps(workdir) < after_steps:
        assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the signal"
        time.sleep(0.05)
    os.kill(launched_pid(proc.pid, 1), signum)
    return time.monotonic()


def losses(workdir: Path) -> list[float]:
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    assert [line["step"] for line in lines] == list(range(1, len(lines) + 1))
    return [line["loss"] for line in lines]


def text(log: Path) -> str:
    return log.read_text().replace("\r", "\n")


@pytest.fixture(scope="module")
def whole(tmp_path_factory) -> Path:
    """The uninterrupted run: one process, four devices (its compiled programs then serve the
    launches below through the session's compilation cache)."""
    workdir = tmp_path_factory.mktemp("whole")
    proc = start(1, 4, workdir / "run", workdir / "log")
    assert proc.wait(timeout=600) == 0, text(workdir / "log")[-3000:]
    return workdir / "run"


@pytest.fixture(scope="module")
def chain(tmp_path_factory) -> dict:
    """2 x 2 processes: SIGTERM to process 1, resume, kill -9 of process 1, resume to the end."""
    root = tmp_path_factory.mktemp("chain")
    workdir, out = root / "run", {}
    proc = start(2, 2, workdir, root / "term.log")
    signal_once(proc, workdir, 1, signal.SIGTERM)
    out["term"] = (proc.wait(timeout=300), text(root / "term.log"))
    out["term_latest"] = load_checkpoint(workdir).step
    proc = start(2, 2, workdir, root / "kill.log")
    killed = signal_once(proc, workdir, out["term_latest"] + 3, signal.SIGKILL)
    code = proc.wait(timeout=300)
    out["kill"] = (code, text(root / "kill.log"), time.monotonic() - killed)
    out["kill_latest"] = load_checkpoint(workdir).step
    proc = start(2, 2, workdir, root / "rest.log")
    out["rest"] = (proc.wait(timeout=600), text(root / "rest.log"))
    out["workdir"] = workdir
    return out


@pytest.mark.slow
def test_sigterm_to_one_process_stops_every_process_at_the_same_step(chain):
    code, log = chain["term"]
    assert code == 128 + signal.SIGTERM, log[-3000:]
    # Both processes voted to stop after the same step and exited 143; the checkpoint (one
    # collective save) is of that step.
    assert re.findall(r"ambsn-launch: process (\d) exited with status (\d+)", log) == [("0", "143"), ("1", "143")]
    # The signalled process says so, naming itself; process 0 reports the stop for the run.
    assert re.search(r"^\[1\] process 1 of 2 \(.+\): SIGTERM: finishing this step", log, re.MULTILINE), log[-3000:]
    stops = re.findall(r"^\[0\] SIGTERM: stopped at step (\d+), checkpoint saved", log, re.MULTILINE)
    assert stops == [str(chain["term_latest"])] and 1 <= chain["term_latest"] <= STEPS - 4, log[-3000:]


@pytest.mark.slow
def test_kill_9_of_one_process_ends_the_other_within_the_peer_timeout(chain):
    code, log, took = chain["kill"]
    assert code == 128 + signal.SIGKILL, log[-3000:]
    assert f"resuming at step {chain['term_latest']} of {STEPS}" in log
    # The line may follow the progress bar's last redraw.
    lost = [line[line.index("error: "):] for line in log.splitlines() if "error: " in line]
    assert len(lost) == 1 and lost[0].startswith("error: lost process 1 of 2 (host "), log[-3000:]
    assert f"exiting with status {distributed.LOST_PEER}" in lost[0]
    assert "Traceback" not in log and "Check failure" not in log
    assert re.findall(r"ambsn-launch: process (\d) exited with status (\d+)", log) == [("0", "75"), ("1", "137")]
    # The bound: the peer timeout, a poll, and the exit of a loaded 2-core machine.
    assert took < PEER_TIMEOUT + distributed.POLL_SECONDS + 15, took
    assert chain["kill_latest"] >= chain["term_latest"]


@pytest.mark.slow
def test_two_processes_resumed_twice_train_bitwise_like_one(chain, whole):
    code, log = chain["rest"]
    assert code == 0, log[-3000:]
    # The last complete checkpoint before the kill is where the run picks up.
    assert f"resuming at step {chain['kill_latest']} of {STEPS}" in log
    got, want = losses(chain["workdir"]), losses(whole)
    assert len(got) == len(want) == STEPS
    # The gradients' all-reduce gives the same bits over 2 x 2 devices as over 1 x 4; the
    # logged loss, a mean reduced in another order, may differ in its last bit.
    np.testing.assert_allclose(got, want, rtol=1e-6)
    a, b = load_checkpoint(chain["workdir"]), load_checkpoint(whole)
    assert a.step == b.step == STEPS
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params), strict=True):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_the_launcher_passes_the_run_on_and_reports_bad_input(capsys):
    env = launch.child_env(1, 2, 3, 4242, {"XLA_FLAGS": "--x"})
    assert (env["JAX_COORDINATOR_ADDRESS"], env["JAX_NUM_PROCESSES"], env["JAX_PROCESS_ID"]) == ("127.0.0.1:4242", "2", "1")
    assert env["XLA_FLAGS"] == "--x --xla_force_host_platform_device_count=3" and env["JAX_PLATFORMS"] == "cpu"
    assert "JAX_COORDINATOR_ADDRESS" not in launch.child_env(0, 1, 4, 4242, {})
    assert launch.status_of(-9) == 137 and launch.status_of(75) == 75
    assert launch.main(["--processes", "0", "--", "true"]) == 2
    assert capsys.readouterr().err == "error: --processes and --devices-per-process must be at least 1\n"


CHILD = """
import signal, sys, time
signal.signal(signal.SIGTERM, lambda *a: (print("got SIGTERM", flush=True), sys.exit(143)))
print("ready", flush=True)
time.sleep(60)
sys.exit(3)
"""


def test_the_launcher_passes_signals_on_and_prefixes_lines():
    proc = subprocess.Popen([sys.executable, "-m", "ambsn_jax.cli.launch", "--processes", "2", "--", sys.executable, "-c", CHILD],
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    seen = {proc.stdout.readline() for _ in range(2)}
    assert seen == {"[0] ready\n", "[1] ready\n"}
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 143
    assert sorted(out.splitlines()) == ["[0] got SIGTERM", "[1] got SIGTERM"]
    assert err.splitlines() == ["ambsn-launch: process 0 exited with status 143", "ambsn-launch: process 1 exited with status 143"]
