"""Joining and leaving a multi-process run (ambsn_jax.distributed). Real processes: whole
trainings and evaluations in tests/cli/test_launch.py."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from ambsn_jax import distributed
from ambsn_jax.errors import UserError
from tests.helpers import ROOT

S = distributed.Settings


def test_a_single_process_joins_nothing():
    assert distributed.resolve(S(), {}) is None
    # A Slurm batch script (one task in its step), or a coordinator with `--cluster off`: still alone.
    assert distributed.resolve(S(), {"SLURM_NTASKS": "4", "SLURM_STEP_NUM_TASKS": "1"}) is None
    assert distributed.resolve(S(cluster="off"), {"JAX_COORDINATOR_ADDRESS": "h:1"}) is None


def test_flags_win_over_the_environment():
    env = {"JAX_COORDINATOR_ADDRESS": "10.0.0.1:1234", "JAX_NUM_PROCESSES": "2", "JAX_PROCESS_ID": "1"}
    got = distributed.resolve(S(peer_timeout=9, join_timeout=5), env)
    assert got == {"coordinator_address": "10.0.0.1:1234", "num_processes": 2, "process_id": 1,
                   "cluster_detection_method": None, "initialization_timeout": 65, "heartbeat_timeout_seconds": 9}  # fmt: skip
    got = distributed.resolve(S(coordinator="h:5", num_processes=4, process_id=3), env)
    assert (got["coordinator_address"], got["num_processes"], got["process_id"]) == ("h:5", 4, 3)


def test_clusters_are_left_to_jax():
    """Several Slurm or Open MPI tasks: JAX reads the address and indices from their variables."""
    for env in ({"SLURM_STEP_NUM_TASKS": "4", "SLURM_PROCID": "2"}, {"OMPI_COMM_WORLD_SIZE": "2"}):
        got = distributed.resolve(S(), env)
        assert got["coordinator_address"] is None and "process_id" not in got and got["cluster_detection_method"] is None
    assert distributed.resolve(S(cluster="slurm"), {})["cluster_detection_method"] == "slurm"
    assert distributed.resolve(S(cluster="jax"), {})["cluster_detection_method"] is None


@pytest.mark.parametrize("env, message", [
    ({"JAX_COORDINATOR_ADDRESS": "h:1", "JAX_PROCESS_ID": "one"}, "JAX_PROCESS_ID='one': must be a non-negative integer"),
    ({"JAX_COORDINATOR_ADDRESS": "nohost"}, "coordinator 'nohost': must be HOST:PORT"),
])  # fmt: skip
def test_bad_settings_are_one_error(env, message):
    with pytest.raises(UserError, match=message):
        distributed.resolve(S(), env)


@pytest.mark.slow
def test_a_coordinator_that_does_not_answer_is_an_error_within_the_timeout():
    # Port 9 (discard) of the loopback: nothing listens there.
    argv = ["--coordinator", "127.0.0.1:9", "--num-processes", "2", "--process-id", "1", "--join-timeout", "3"]
    start = time.monotonic()
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), "--config", "demo", *argv],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)  # fmt: skip
    took = time.monotonic() - start
    assert done.returncode == 2, done.stderr[-2000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and lines[0].startswith("error: process 1 of 2 could not join the run at 127.0.0.1:9 within 3 s")
    assert "Traceback" not in done.stderr and "Check failure" not in done.stderr
    assert took < 3 + 30  # the interpreter's and JAX's start on a loaded 2-core machine


def test_a_lone_process_speaks_without_a_prefix():
    assert distributed.speaker() == ""


def test_no_cluster_for_jax_to_detect_is_one_error(monkeypatch):
    import jax

    def initialize(**kwargs):
        raise ValueError("coordinator_address should be defined.")

    monkeypatch.setattr(jax.distributed, "initialize", initialize)
    try:
        with pytest.raises(UserError, match=r"cannot join a multi-process run: coordinator_address should be defined\. \(see"):
            distributed.run(S(cluster="jax"), lambda: 0)
    finally:
        jax.config.update("jax_enable_recoverability", False)
