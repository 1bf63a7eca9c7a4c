"""Stopping training cleanly when the cluster asks: SIGTERM (preemption, `scancel`, `kubectl
delete`) or SIGINT (Ctrl-C).

The first signal only raises a flag: the loop finishes the step in flight, checkpoints it and
exits with `exit_status` (128 + the signal's number, what a shell reports for a process that
signal ended, so schedulers and wrappers that look for 143 / 130 still see "terminated").
A second signal ends the process at once, without a checkpoint.

In a multi-process run every process must stop after the same step, or the checkpoint's
collective writes hang: the processes vote with a tiny all-reduce on the devices. The vote of
step s is read at step s + 1, once step s + 1 is dispatched, so the host never waits for the
devices before reading the next batch; a stop thus lands one step after the signal.
"""

from __future__ import annotations

import os
import signal
import sys
import types
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from ambsn_jax import mesh as meshlib
from ambsn_jax.distributed import speaker

SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_status(signum: int) -> int:
    return 128 + signum


class Preemption:
    """A context manager: while inside, SIGTERM / SIGINT request a stop instead of ending the
    process; the handlers it replaced are put back on exit."""

    def __init__(self, mesh: Mesh):
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._multi = jax.process_count() > 1
        self._mesh = mesh
        self._pending: jax.Array | None = None
        self._vote: Callable[[jax.Array], jax.Array] = jax.jit(jnp.max, out_shardings=meshlib.replicated(mesh))

    def __enter__(self) -> Preemption:
        for signum in SIGNALS:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signum is not None:
            print(f"{speaker()}{signal.Signals(signum).name} again: exiting now, without a checkpoint", file=sys.stderr, flush=True)
            os._exit(exit_status(signum))
        self.signum = signum
        print(
            f"{speaker()}{signal.Signals(signum).name}: finishing this step and checkpointing it (send it again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def stop_now(self) -> bool:
        """Whether every process stops after the step just dispatched (call once a step)."""
        if not self._multi:
            return self.signum is not None
        previous, self._pending = self._pending, self._cast()
        stop = previous is not None and bool(previous)
        if stop and self.signum is None:
            # Another process was signalled: its exit status is that of the run.
            self.signum = signal.SIGTERM
        return stop

    def _cast(self) -> jax.Array:
        """This process's vote, all-reduced over every device of every process (not awaited)."""
        local = np.full((len(self._mesh.local_devices),), self.signum is not None, np.int32)
        votes = jax.make_array_from_process_local_data(meshlib.batch_sharding(self._mesh), local)
        return self._vote(votes)
