"""Checkpoints that went wrong: a broken latest step on resume, a disk that fails while saving.

A step that cannot be restored (a truncated or missing file, an unreadable item) is moved
aside to `checkpoints/broken-<step>-<time>`, a name the manager does not read as a step, so
nothing is deleted, and the run resumes from the newest step that restores (its losses are
those of an uninterrupted run: every step's checkpoint holds all the run's state).
"""

from __future__ import annotations

import functools
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import jax
import orbax.checkpoint as ocp
from jax.experimental import multihost_utils

from ambsn_jax.errors import UserError

T = TypeVar("T")


def _set_aside(step_dir: Path) -> Path:
    target = step_dir.with_name(f"broken-{step_dir.name}-{time.strftime('%Y%m%d-%H%M%S')}")
    step_dir.rename(target)
    return target


def _first_line(e: BaseException) -> str:
    # Orbax wraps the informative error (TensorStore's "byte range ... not valid") in its own.
    while e.__cause__ is not None:
        e = e.__cause__
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0] if text else ''}"[:240]


def _orphaned_read(exc: BaseException) -> bool:
    return isinstance(exc, RuntimeError) and str(exc) == "Event loop is closed"


class _OrphanedReads(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Task exception was never retrieved")


@functools.cache
def _quiet_orphaned_reads() -> None:
    """Orbax reads a step with many asynchronous tasks; once one fails, the others end after
    Orbax closed their event loop, and asyncio logs "Task exception was never retrieved" and
    TensorStore's callbacks report "Event loop is closed" as unraisable (dozens for one broken
    step), some while the failure is still on its way. Those reads belong to a step reported
    and set aside: from the first restore on, these two messages, and only they, are dropped."""
    logging.getLogger("asyncio").addFilter(_OrphanedReads())
    previous = sys.unraisablehook

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not _orphaned_read(unraisable.exc_value):
            previous(unraisable)

    sys.unraisablehook = hook


def restore_latest_good(
    mngr: ocp.CheckpointManager, restore: Callable[[int], T]
) -> tuple[int, T] | None:
    """(step, `restore(step)`) of the newest step that restores; None if the manager has none.

    The newer steps that failed are reported and set aside (by process 0; all then reload).
    When no step restores, nothing is moved: the cause may be this code rather than the files.
    """
    ckpt_dir = Path(mngr.directory)
    broken: dict[int, str] = {}
    _quiet_orphaned_reads()
    for step in sorted(mngr.all_steps(), reverse=True):
        try:
            restored = restore(step)
        # Orbax re-raises TensorStore's read errors (a cut file, a missing chunk) as a bare
        # Exception, Grain's as ValueError or OSError: any failure means this step is unusable.
        except Exception as e:  # noqa: BLE001
            broken[step] = _first_line(e)
            continue
        for bad, reason in broken.items():
            if jax.process_index() == 0:
                moved = _set_aside(ckpt_dir / str(bad))
                print(f"warning: checkpoint step {bad} cannot be restored ({reason}); moved it to {moved}, "
                      f"resuming from step {step}", file=sys.stderr)  # fmt: skip
        if broken:
            if jax.process_count() > 1:
                multihost_utils.sync_global_devices("set aside broken checkpoints")
            mngr.reload()
        return step, restored
    if broken:
        reasons = "; ".join(f"step {step}: {reason}" for step, reason in broken.items())
        raise UserError(
            f"{ckpt_dir}: no checkpoint restores ({reasons}); restore a copy of the folder, or move it "
            "away to train from the start"
        )
    return None


class HeldErrors(logging.Filter):
    """Holds back the ERROR records Orbax logs (on the `absl` logger) while training saves.

    A full disk makes Orbax's writer threads log tracebacks before the failure reaches the
    loop, where `save_errors` turns it into one `error:` line. Held records are dropped once
    that happened (`drop`), and logged after all when the saves ended well (`release`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.held: list[logging.LogRecord] = []
        self._logger = logging.getLogger("absl")

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno >= logging.ERROR:
            self.held.append(record)
            return False
        return True

    def __enter__(self) -> HeldErrors:
        self._logger.addFilter(self)
        return self

    def __exit__(self, exc_type: type | None, *rest: object) -> None:
        self._logger.removeFilter(self)
        if exc_type is None:
            for record in self.held:
                self._logger.handle(record)
        self.held.clear()


@contextmanager
def save_errors(ckpt_dir: Path) -> Iterator[None]:
    """Turns a failed write (full disk, lost permissions) into a UserError naming the folder.

    Orbax writes asynchronously, so the error of step s surfaces at the next save or at
    `wait_until_finished`: wrap both. The steps committed before stay whole, since a step
    only becomes visible once all of it is written.
    """
    try:
        yield
    # The disk's refusal comes as OSError from Orbax's own files and as ValueError
    # (RESOURCE_EXHAUSTED, PERMISSION_DENIED) from TensorStore's: whichever thread fails first.
    except Exception as e:  # noqa: BLE001
        raise UserError(
            f"{ckpt_dir}: cannot write a checkpoint ({_first_line(e)[:200]}); free space or fix the "
            "permissions, then rerun the same command to resume from the last complete step"
        ) from e
