"""A NaN or an infinity in training: stop at that step, or skip it (`train.skip_nonfinite`).

The step itself flags it (`metrics["nonfinite"]`) and, when skipping, keeps the old
parameters. Either way no checkpoint with non-finite parameters is written: the flag is read
before the step's checkpoint, and a stop raises before it.
"""

from __future__ import annotations

import jax
import orbax.checkpoint as ocp

from ambsn_jax.errors import UserError

# Steps skipped so far: in metrics.jsonl and in each checkpoint's `train` item (beside the step
# and the RNG key, `checkpoints._train_item`), so that a resumed run counts on.
SKIPPED = "skipped_nonfinite"


def check(step: int, metrics: dict[str, jax.Array], skip: bool, mngr: ocp.CheckpointManager) -> int:
    """1 if step `step` was non-finite and skipped, else 0; UserError if it was and `skip` is off.

    Pops the flag from `metrics` (the rest is logged) and waits for the step to finish.
    """
    if not bool(metrics.pop("nonfinite")):
        return 0
    if skip:
        return 1
    mngr.wait_until_finished()
    last = mngr.latest_step()
    good = f"the last good checkpoint is step {last} in {mngr.directory}" if last is not None else "no checkpoint was written yet"
    raise UserError(
        f"step {step}: the loss or gradient is not finite (loss {float(metrics['loss']):g}, gradient norm "
        f"{float(metrics['grad_norm']):g}, learning rate {float(metrics['lr']):g}); training stopped, {good}. "
        "Lower optim.lr (or set optim.grad_clip), check the training data, or set train.skip_nonfinite=true "
        "to skip such steps; then rerun the same command"
    )


class DeferredFlag:
    """The non-finite flag of the last dispatched step, read late: once the next step is
    dispatched, so that the host never waits for the devices between steps, and always before
    a log line or a checkpoint (`read`), so that no checkpoint holds a non-finite state.

    `skipped` counts the steps skipped so far, the restored count included.
    """

    def __init__(self, skip: bool, mngr: ocp.CheckpointManager, skipped: int):
        self.skip = skip
        self.skipped = skipped
        self._mngr = mngr
        self._unread: tuple[int, dict[str, jax.Array]] | None = None

    def defer(self, step: int, metrics: dict[str, jax.Array]) -> None:
        """Step `step` was dispatched: read the previous step's flag, keep this one's for later."""
        self.read()
        self._unread = (step, metrics)

    def read(self) -> None:
        """Reads the kept flag, if any (UserError on a non-finite step unless skipping)."""
        if self._unread is not None:
            unread, self._unread = self._unread, None
            self.skipped += check(*unread, self.skip, self._mngr)
