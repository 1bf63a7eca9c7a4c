"""What a run reports as it goes: metrics.jsonl, TensorBoard events, the progress bar, and
the optional profiler trace."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import numpy as np
from tensorboardX import SummaryWriter
from tqdm import tqdm

METRICS_FILE = "metrics.jsonl"
PROFILE_DIR = "profile"


class Profiler:
    """A `jax.profiler` trace of steps [first, last] (TensorBoard's profile plugin reads it)."""

    def __init__(self, steps: list[int] | None, out: Path, enabled: bool):
        self.first, self.last = steps if steps and enabled else (0, -1)
        self.out = out
        self.running = False

    def before(self, step: int) -> None:
        if step == self.first:
            jax.profiler.start_trace(str(self.out))
            self.running = True

    def after(self, step: int, metrics: dict[str, jax.Array]) -> None:
        if self.running and step == self.last:
            jax.block_until_ready(metrics)  # the trace holds the steps' device work, not just their dispatch
            self.close()

    def close(self) -> None:
        if self.running:
            jax.profiler.stop_trace()
            self.running = False


def _step_of(line: str) -> float:
    """The step a metrics.jsonl line is about; infinite for a line cut short by a kill."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return float("inf")


class RunLog:
    """metrics.jsonl, TensorBoard events and the progress bar; silent on all hosts but the first.

    On resume, lines and events after the restored step (written by the interrupted run) are
    dropped, so the files read as one uninterrupted run.
    """

    def __init__(self, workdir: Path, start: int, total: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        self.path = workdir / METRICS_FILE
        kept = [line for line in self._lines() if _step_of(line) <= start]
        self.path.write_text("".join(kept))
        self.jsonl = self.path.open("a")
        self.tb = SummaryWriter(str(workdir / "tb"), purge_step=start + 1)
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines(keepends=True) if self.path.is_file() else []

    def write(self, step: int, values: dict[str, float], tb_prefix: str) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        for key, value in values.items():
            self.tb.add_scalar(f"{tb_prefix}/{key}", value, step)
        self.tb.flush()

    def images(self, step: int, rows: list[np.ndarray]) -> None:
        """Validation blocks as TensorBoard images, each a row noisy | denoised | clean."""
        if not self.enabled:
            return
        for i, row in enumerate(rows):
            self.tb.add_image(f"val/block{i}", row, step, dataformats="HWC")
        self.tb.flush()

    def progress(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.jsonl.close()
            self.tb.close()
