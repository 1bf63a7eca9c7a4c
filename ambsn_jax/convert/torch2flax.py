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
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint.store import Checkpoint, load_checkpoint, save_params
from ambsn_jax.convert import torch_port
from ambsn_jax.errors import UserError
from ambsn_jax.files import atomic_dir, sha256_file
from ambsn_jax.inference.release import pd_forward
from ambsn_jax.nets import registry

# The bound on raw outputs (0..255 scale); float32 against float64 noise is about 2e-4.
DEFAULT_TOLERANCE = 5e-3
VERIFY_SHAPE = (1, 3, 40, 40)  # NCHW; 40 divides by both PD factors


def default_out(src: Path) -> Path:
    """`AMBSN.pth` -> `AMBSN_orbax` beside it."""
    return src.with_name(f"{src.stem}_orbax")


def max_abs_diffs(model: nnx.Module, state_dict: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """Max abs differences between `model` and the release's PyTorch network holding `state_dict`.

    Both run the bsn alone, and the PD-2 and PD-5 forward, on one random 0..255 input.
    """
    # Imported here, after read_pth has told a user without torch how to install it.
    import torch

    from ambsn_jax.convert.reference import ReleaseDenoiser

    ref = ReleaseDenoiser(bsn=registry.of_config(model.config).reference(model.config))
    stripped = torch_port.strip_prefixes(state_dict)
    ref.bsn.load_state_dict({k: torch.from_numpy(np.asarray(v)) for k, v in stripped.items()}, strict=True)
    x = np.random.default_rng(seed).uniform(0, 255, VERIFY_SHAPE).astype(np.float32)
    xt, xj = torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))
    with torch.no_grad():
        ref_out = {"bsn": ref.bsn(xt), "pd2": ref(xt, pd=2), "pd5": ref(xt, pd=5)}
    # TF32 convolutions on GPUs alone move outputs by ~0.3: compare at full float32.
    with jax.default_matmul_precision("highest"):
        jax_out = {"bsn": model(xj), "pd2": pd_forward(model, xj, 2), "pd5": pd_forward(model, xj, 5)}
    return {
        name: float(np.max(np.abs(np.asarray(jax_out[name]) - ref_out[name].numpy().transpose(0, 2, 3, 1))))
        for name in ref_out
    }


def check_within(diffs: dict[str, float], tolerance: float, what: Path) -> None:
    """Prints the differences; a UserError naming `what` when one exceeds `tolerance` (or is NaN)."""
    print(f"max abs diff vs the PyTorch reference (tolerance {tolerance:g}):")
    for name, diff in diffs.items():
        print(f"  {name}: {diff:.3e}")
    failed = [f"{name} by {diff:.3e}" for name, diff in diffs.items() if not diff <= tolerance]
    if failed:
        raise UserError(f"{what}: verification failed: {', '.join(failed)} > {tolerance:g}; nothing written")


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
        check_within(diffs, tolerance, src)
    return Checkpoint(written.params, meta, out, 0)


def parameter_count(params: dict) -> int:
    return sum(int(np.size(v)) for v in jax.tree.leaves(params))
