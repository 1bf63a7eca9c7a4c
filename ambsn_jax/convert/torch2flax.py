"""An official AM-BSN, AP-BSN or MM-BSN `.pth` -> an Orbax checkpoint, verified against PyTorch.

The file is read as untrusted input (`weights_only`), its architecture told by its keys, checked
key by key, written beside the output under a temporary name, loaded back and compared with the
release's PyTorch network on a random input (bsn, PD-2 and PD-5 forward). Only a checkpoint that
passes is renamed into place: a refusal or a failed check leaves nothing there.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import jax
import numpy as np

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint.store import Checkpoint, load_checkpoint, save_params
from ambsn_jax.checkpoint import torch_port
from ambsn_jax.convert.verify import DEFAULT_TOLERANCE, max_abs_diffs, require_within
from ambsn_jax.errors import UserError
from ambsn_jax.files import atomic_dir, sha256_file
from ambsn_jax.nets import registry

def default_out(src: Path) -> Path:
    """`AMBSN.pth` -> `AMBSN_orbax` beside it."""
    return src.with_name(f"{src.stem}_orbax")


def convert(src: Path, out: Path, arch: str | None = None, tolerance: float = DEFAULT_TOLERANCE, force: bool = False) -> Checkpoint:
    """Converts and verifies `src` into the Orbax checkpoint `out`; returns what was written."""
    out = out.absolute()
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; refusing to replace it")
    state_dict = torch_port.read_pth(src)
    try:
        params, cfg = torch_port.params_from_state_dict(state_dict, arch)
    except UserError as e:
        raise UserError(f"{src}: {e}") from e
    record = registry.of_config(cfg)
    meta = CheckpointMeta.for_release(
        record.name,
        cfg,
        source=src.name,
        source_sha256=sha256_file(src),
        created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )
    with atomic_dir(out, replace=True) as tmp:
        save_params(tmp, params, meta)
        written = load_checkpoint(tmp)
        try:
            diffs = max_abs_diffs(written.module(), state_dict)
        except UserError as e:
            raise UserError(f"{src}: {e}") from e
        require_within(diffs, tolerance, str(src), "the PyTorch reference")
    return Checkpoint(written.params, meta, out, 0)


def parameter_count(params: dict) -> int:
    return sum(int(np.size(v)) for v in jax.tree.leaves(params))
