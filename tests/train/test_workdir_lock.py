"""One training run per workdir (ambsn_jax.train.workdir_lock): refused naming the holder,
released however the holder ends, a stale lock file taken over with a warning."""

from __future__ import annotations

import json
import os
import socket
import subprocess

import pytest

from ambsn_jax.errors import UserError
from ambsn_jax.train.workdir_lock import LOCK_NAME, hold_workdir


def test_a_held_workdir_is_refused_naming_the_holder(tmp_path, capsys):
    workdir = tmp_path / "run"
    with hold_workdir(workdir):
        holder = json.loads((workdir / LOCK_NAME).read_text())
        assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
        # flock belongs to the open file: a second open, even in this process, is refused.
        with pytest.raises(UserError) as e:
            with hold_workdir(workdir):
                pass
        assert str(e.value).startswith(f"{workdir}: in use by process {os.getpid()} on host {socket.gethostname()}")
        assert "pass another --workdir" in str(e.value)
    # Released: empty, and the next run has nobody to warn about.
    assert (workdir / LOCK_NAME).read_text() == ""
    with hold_workdir(workdir):
        pass
    assert capsys.readouterr().err == ""


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capsys):
    workdir = tmp_path / "run"
    workdir.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs; its "lock" is a file the kernel holds no lock for
    (workdir / LOCK_NAME).write_text(json.dumps({"host": socket.gethostname(), "pid": dead.pid, "started": "then"}))
    with hold_workdir(workdir):
        assert json.loads((workdir / LOCK_NAME).read_text())["pid"] == os.getpid()
    err = capsys.readouterr().err
    assert f"taking over the lock of process {dead.pid} on host {socket.gethostname()} (started then)" in err
    assert "which no longer runs" in err


def test_an_unwritable_workdir_is_one_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(UserError, match="cannot create the workdir lock"):
        with hold_workdir(blocker / "run"):
            pass
