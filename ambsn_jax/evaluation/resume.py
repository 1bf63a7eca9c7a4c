"""Evaluations that resume: a rerun with the same arguments redoes only the missing outputs.

Every output is published atomically (`files.atomic_path`), so a file that exists is whole.
Whether it is *this* run's is told by a manifest in the output folder: the checkpoint's
sha256 and the inference options, and per finished output a record of its input (R3 item
index, path, size, modification time) and of the output file itself (size, modification
time, so that a file another run rewrote since is not taken for ours). An output is reused
only when all of these match; `--overwrite` redoes everything.

One manifest per process, `.ambsn-evaluate.<process>.jsonl`: in a data-parallel run every
process writes the outputs of its own share (`mesh.my_share`), and so only its own manifest,
with no lock or collective between them; every process reads all of them, so a rerun with
another process count still reuses what any process finished (an output depends on its item
index, never on the process that made it). A manifest is a header line (the options), then
one line per output appended as it is written: O(1) per output, and a line cut short by a
kill is ignored (its output is redone). Dot names: never listed as images.

The SIDD benchmark's one submission file is resumed through `PartialBlocks` instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import jax
import numpy as np

from ambsn_jax.files import atomic_path

PREFIX = ".ambsn-evaluate."
SUFFIX = ".jsonl"


def manifest_path(folder: Path, process: int) -> Path:
    return folder / f"{PREFIX}{process}{SUFFIX}"


def fingerprint(index: int, source: Path, **extra: Any) -> dict[str, Any]:
    """What an output depends on besides the options: its input and its R3 item index.

    A missing input matches no record, so its output is redone, where reading it fails clearly.
    """
    item: dict[str, Any] = {"index": index, "source": str(source.resolve()), **extra}
    if source.is_file():
        stat = source.stat()
        item |= {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    return item


def _output_stat(path: Path) -> dict[str, int] | None:
    try:
        stat = path.stat()
    except OSError:
        return None
    return {"size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _read(path: Path, options: dict[str, Any]) -> dict[str, Any]:
    """The finished outputs a manifest lists for `options` ({} if it is another run's)."""
    try:
        lines = path.read_text().splitlines()
    except (OSError, UnicodeDecodeError):
        return {}
    records = []
    for line in lines:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line a kill cut short
    if not records or records[0] != {"options": options}:
        return {}
    return {r["name"]: r for r in records[1:] if isinstance(r, dict) and isinstance(r.get("name"), str)}


class Resume:
    """The finished outputs of `folder` for `options`; `record` each new one as it is written."""

    def __init__(self, folder: Path, options: dict[str, Any], overwrite: bool, process: int | None = None):
        self.folder = Path(folder)
        self.options = json.loads(json.dumps(options))  # as it reads back: tuples as lists
        self.path = manifest_path(self.folder, jax.process_index() if process is None else process)
        self.reused = 0
        self.done: dict[str, Any] = {}
        if not overwrite:
            for other in sorted(self.folder.glob(f"{PREFIX}*{SUFFIX}")):
                self.done |= _read(other, self.options)
        # This process's manifest starts anew: the header and all that is known finished (a
        # superset of its share, so another process reading it meanwhile loses nothing).
        lines = [{"options": self.options}, *self.done.values()]
        with atomic_path(self.path) as tmp:
            tmp.write_text("".join(json.dumps(line) + "\n" for line in lines))
        self._log = None

    def finished(self, name: str, item: dict[str, Any]) -> bool:
        """Whether output `name` (relative to the folder) is already there for `item`."""
        record = self.done.get(name)
        reuse = (
            record is not None
            and record.get("item") == json.loads(json.dumps(item))
            and record.get("output") == _output_stat(self.folder / name)
        )
        self.reused += reuse
        return reuse

    def record(self, name: str, item: dict[str, Any]) -> None:
        """Notes that output `name`, just published, is `item`'s."""
        line = {"name": name, "item": item, "output": _output_stat(self.folder / name)}
        self.done[name] = json.loads(json.dumps(line))
        if self._log is None:
            self._log = open(self.path, "a")  # noqa: SIM115 - kept open for the run
        self._log.write(json.dumps(line) + "\n")
        self._log.flush()

    def close(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None


class PartialBlocks:
    """The SIDD benchmark's denoised blocks kept as they come, in a scratch folder beside the
    submission (`OUT.csv.partial/`), so that a rerun with the same arguments denoises only the
    calls still missing and writes the same submission an uninterrupted run writes.

    One `.npy` per call of `sidd.denoise_blocks` (named by its first block, published
    atomically), and `manifest.json` holding the options; other options (or `overwrite`)
    clear the folder. Only the lead process writes; `load` tells every process the same calls
    (the lead's view, broadcast), since each call runs on all of them. The folder is removed
    once the submission is written.
    """

    MANIFEST = "manifest.json"

    def __init__(self, submission: Path, options: dict[str, Any], overwrite: bool):
        self.folder = Path(submission).with_name(Path(submission).name + ".partial")
        self.options = json.loads(json.dumps(options))
        self.lead = jax.process_index() == 0
        self.reused = 0
        if not self.lead:
            return
        manifest = self.folder / self.MANIFEST
        try:
            same = not overwrite and json.loads(manifest.read_text()) == self.options
        except (OSError, json.JSONDecodeError):
            same = False
        if not same:
            if self.folder.exists():
                shutil.rmtree(self.folder)
            with atomic_path(manifest) as tmp:
                tmp.write_text(json.dumps(self.options))

    def _chunk(self, start: int) -> Path:
        return self.folder / f"{start:09d}.npy"

    def load(self, starts: list[int], shapes: list[tuple[int, ...]]) -> dict[int, np.ndarray]:
        """{start: blocks} of the calls finished earlier, whole and of the expected shape
        (the lead's arrays; the other processes get the same keys with empty arrays)."""
        found: dict[int, np.ndarray] = {}
        if self.lead:
            for start, shape in zip(starts, shapes):
                try:
                    blocks = np.load(self._chunk(start))
                except (OSError, ValueError):
                    continue
                if blocks.shape == shape and blocks.dtype == np.uint8:
                    found[start] = blocks
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils

            mask = np.array([start in found for start in starts])
            mask = np.asarray(multihost_utils.broadcast_one_to_all(mask))
            found = {s: found.get(s, np.empty(0, np.uint8)) for s, m in zip(starts, mask) if m}
        self.reused = len(found)
        return found

    def save(self, start: int, blocks: np.ndarray) -> None:
        if not self.lead:
            return
        with atomic_path(self._chunk(start)) as tmp, open(tmp, "wb") as f:
            np.save(f, blocks)

    def remove(self) -> None:
        if self.lead:
            shutil.rmtree(self.folder, ignore_errors=True)
