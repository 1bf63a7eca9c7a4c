"""Checkpoints that went wrong (ambsn_jax.train.recovery): a broken newest step set aside on
resume, none restorable as one error, a failed save as one error line without Orbax's logs."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import numpy as np
import orbax.checkpoint as ocp
import pytest

from ambsn_jax.cli.train import main
from ambsn_jax.errors import UserError
from ambsn_jax.train import recovery
from tests.helpers import ROOT


def _manager(path):
    return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=None))


def _save_steps(path, steps):
    with _manager(path) as mngr:
        for step in steps:
            mngr.save(step, args=ocp.args.Composite(x=ocp.args.StandardSave({"w": np.random.default_rng(step).normal(size=1000).astype(np.float32) + step})))
        mngr.wait_until_finished()


def _restore(mngr):
    target = {"w": np.zeros(1000, np.float32)}
    return lambda step: mngr.restore(step, args=ocp.args.Composite(x=ocp.args.StandardRestore(target)))["x"]["w"]


def _biggest_file(folder):
    return max((p for p in folder.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)


def test_a_broken_newest_step_is_set_aside_and_an_older_one_restores(tmp_path, capsys):
    ckpt = tmp_path / "checkpoints"
    _save_steps(ckpt, [1, 2, 3])
    for step in (2, 3):  # cut short, as a kill or a full disk in the middle of a copy leaves it
        big = _biggest_file(ckpt / str(step) / "x")
        os.truncate(big, big.stat().st_size // 2)
    with _manager(ckpt) as mngr:
        step, w = recovery.restore_latest_good(mngr, _restore(mngr))
        assert step == 1 and abs(float(w.mean()) - 1.0) < 0.2
        assert mngr.all_steps() == [1]  # reloaded: the set-aside steps are gone from its view
    err = capsys.readouterr().err
    assert "warning: checkpoint step 3 cannot be restored" in err and "warning: checkpoint step 2 cannot be restored" in err
    assert "resuming from step 1" in err
    aside = sorted(p.name.split("-")[1] for p in ckpt.glob("broken-*"))
    assert aside == ["2", "3"]
    assert sorted(p.name for p in ckpt.iterdir() if not p.name.startswith("broken")) == ["1"]


def test_no_restorable_step_is_one_error_and_moves_nothing(tmp_path):
    ckpt = tmp_path / "checkpoints"
    _save_steps(ckpt, [4, 8])
    for step in (4, 8):
        big = _biggest_file(ckpt / str(step) / "x")
        os.truncate(big, big.stat().st_size // 2)
    with _manager(ckpt) as mngr, pytest.raises(UserError) as e:
        recovery.restore_latest_good(mngr, _restore(mngr))
    assert str(e.value).startswith(f"{ckpt}: no checkpoint restores (step 8: ")
    assert "; step 4: " in str(e.value) and "move it away to train from the start" in str(e.value)
    assert sorted(p.name for p in ckpt.iterdir()) == ["4", "8"]


def test_an_empty_folder_restores_nothing(tmp_path):
    with _manager(tmp_path / "checkpoints") as mngr:
        assert recovery.restore_latest_good(mngr, _restore(mngr)) is None


def test_a_failed_save_is_one_error_naming_the_folder_and_orbax_logs_are_held(tmp_path, caplog):
    with pytest.raises(UserError) as e:
        with recovery.HeldErrors() as held, recovery.save_errors(tmp_path / "checkpoints"):
            logging.getLogger("absl").error("Traceback of a writer thread")
            raise OSError(28, "No space left on device", str(tmp_path / "checkpoints" / "5"))
    text = str(e.value)
    assert text.startswith(f"{tmp_path / 'checkpoints'}: cannot write a checkpoint (OSError: ")
    assert "No space left on device" in text and "rerun the same command to resume" in text
    assert not held.held and "Traceback of a writer thread" not in caplog.text
    # Saves that end well let the held records through after all.
    with recovery.HeldErrors():
        logging.getLogger("absl").error("a real error")
    assert "a real error" in caplog.text


def test_a_full_disk_while_saving_keeps_the_earlier_steps(tmp_path):
    """A small tmpfs (needs root): a save that does not fit is one error, and the steps saved
    before it still restore."""
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("needs root to mount a small tmpfs (a full disk)")
    try:
        ckpt = mnt / "checkpoints"
        with _manager(ckpt) as mngr:
            small = {"w": np.ones(1000, np.float32)}
            mngr.save(1, args=ocp.args.Composite(x=ocp.args.StandardSave(small)))
            mngr.wait_until_finished()
            with pytest.raises(UserError, match=f"{ckpt}: cannot write a checkpoint"):
                with recovery.HeldErrors(), recovery.save_errors(ckpt):
                    mngr.save(2, args=ocp.args.Composite(x=ocp.args.StandardSave({"w": np.random.default_rng(0).normal(size=2_000_000).astype(np.float32)})))
                    mngr.wait_until_finished()
        with _manager(ckpt) as mngr:
            step, w = recovery.restore_latest_good(mngr, _restore(mngr))
        assert step == 1 and float(w.sum()) == 1000.0
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


@pytest.mark.slow
def test_resuming_past_a_broken_step_says_one_line_and_no_traceback(tmp_path, capsys):
    """A real run's state (params, optimizer, data iterator): Orbax's many asynchronous reads
    of the broken step end after their event loop closed, which Python used to report on
    stderr as up to hundreds of tracebacks (in one run of two, measured)."""

    def argv(steps: int) -> list[str]:
        return ["--config", "demo", "--workdir", str(tmp_path / "run"), "--max-steps", str(steps), "--save-every", "1",
                "--set", "model.base_ch=4", "data.crop=20", "data.workers=0", "train.batch_size=4", "val.dir=null"]  # fmt: skip

    # The first run in this process: the resume below finds its programs in the session's cache.
    assert main(argv(2)) == 0
    capsys.readouterr()
    for data in (tmp_path / "run" / "checkpoints" / "2").rglob("d/*"):
        os.truncate(data, data.stat().st_size // 2)
    # The resume in a process of its own: stderr as a user sees it, Python's own hooks included.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    done = subprocess.run([sys.executable, str(ROOT / "train.py"), *argv(3)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stderr.replace("\r", "\n").splitlines() if line.strip() and "%|" not in line]
    assert len(lines) == 1, done.stderr[-3000:]
    assert lines[0].startswith("warning: checkpoint step 2 cannot be restored (")
    assert f"moved it to {tmp_path / 'run' / 'checkpoints' / 'broken-2-'}" in lines[0] and lines[0].endswith("resuming from step 1")
