"""A checkpoint's parameters -> the release's `.pth`, verified against its PyTorch network.

The file holds the release's container `{'model_weight': {'denoiser': sd}}` (TM-BSN, NBSN: the
bare state dict their release loads) with the release's keys for the checkpoint's architecture: `bsn.`
prefixes (not theirs), both names of every shared module, the
masked convs' `.mask` buffers; float32, OIHW, contiguous. It is written beside the output under
a temporary name, read back with `torch.load(weights_only=True)`, loaded into the reference with
`strict=True` and compared with the JAX model (bsn, PD-2 and PD-5 forward); only then is it
renamed into place (docs/export.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from flax import nnx

from ambsn_jax.checkpoint.store import Checkpoint, Params, load_checkpoint
from ambsn_jax.checkpoint import torch_port
from ambsn_jax.convert.verify import DEFAULT_TOLERANCE, max_abs_diffs, require_within
from ambsn_jax.errors import UserError
from ambsn_jax.files import atomic_path
from ambsn_jax.nets import registry

# The release's wrapper holds the network as `self.bsn`.
PREFIX = "bsn."


def params_to_state_dict(params: Params, config: Any) -> dict[str, np.ndarray]:
    """The release's state dict (keys `bsn.*`; bare keys for a release that saves a bare state
    dict, TM-BSN's) holding `params` of a network of typed `config`.

    A shared module is written under both of its torch names. Masked kernels get zeros at
    their blind taps whatever the Flax kernel holds there (a network trained here keeps its
    initial values at those taps, which its forward never reads), followed by their mask
    buffer as the release registers it: the (k, k) pattern expanded to (out, in, k, k).
    """
    record = registry.of_config(config)
    flat = {path: np.asarray(v) for path, v in nnx.traversals.flatten_mapping(params).items()}
    masks = record.mask_map(config)
    prefix = "" if record.bare_state_dict else PREFIX
    sd: dict[str, np.ndarray] = {}
    for key, path in record.key_map(config).items():
        value = flat[path]
        conv = key.rsplit(".", 1)[0]
        mask_key = f"{conv}.mask"
        if key.endswith(".weight"):
            if mask_key in masks:
                # where, not a product: a product leaves -0.0 at the blind taps of negative weights.
                value = np.where(masks[mask_key][1][:, :, None, None] != 0, value, np.float32(0))
            value = value.transpose(3, 2, 0, 1)  # HWIO -> OIHW
        # A copy: arrays viewed from JAX buffers are read-only, which torch.from_numpy warns about.
        sd[prefix + key] = np.array(value, dtype=np.float32, order="C")
        if key.endswith(".bias") and mask_key in masks:
            # After weight and bias, where the release's module registers its buffer.
            weight = sd[f"{prefix}{conv}.weight"]
            sd[prefix + mask_key] = np.array(np.broadcast_to(masks[mask_key][1], weight.shape), np.float32, order="C")
    return sd


def save_pth(path: str | Path, state_dict: dict[str, np.ndarray], bare: bool = False) -> None:
    """Write `state_dict` in the release's container (`bare`: as it is, as TM-BSN's release saves
    it), as plain tensors `weights_only` loads."""
    import torch

    tensors = {k: torch.from_numpy(v) for k, v in state_dict.items()}
    torch.save(tensors if bare else {"model_weight": {"denoiser": tensors}}, path)


def refuse_existing(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise UserError(f"{out}: already exists (use --force to replace it)")
    if out.is_dir():
        raise UserError(f"{out}: is a directory; refusing to replace it")


def load_named(ckpt: str | Path) -> Checkpoint:
    """`load_checkpoint`, its refusals naming the checkpoint."""
    try:
        return load_checkpoint(ckpt)
    except UserError as e:
        raise UserError(str(e) if str(e).startswith(str(ckpt)) else f"{ckpt}: {e}") from e


def export_pth(ckpt: str | Path, out: str | Path, force: bool = False, tolerance: float = DEFAULT_TOLERANCE) -> Checkpoint:
    """Write `ckpt`'s weights to `out` as the release's `.pth`, once the reference has verified them.

    Raises UserError, with nothing written at `out`, if `out` exists (without `force`), the
    checkpoint is not one of the releases' networks, or the reference differs from the JAX
    model by more than `tolerance` (0..255 scale). Returns the checkpoint exported.
    """
    out = Path(out).absolute()
    refuse_existing(out, force)
    checkpoint = load_named(ckpt)
    config = checkpoint.meta.network_config()
    state_dict = params_to_state_dict(checkpoint.params, config)
    with atomic_path(out) as tmp:
        save_pth(tmp, state_dict, bare=registry.of_config(config).bare_state_dict)
        # What a user of the release will load: the file itself, read as untrusted input.
        written = torch_port.read_pth(tmp)
        try:
            diffs = max_abs_diffs(checkpoint.module(), written)
        except UserError as e:
            raise UserError(f"{ckpt}: {e}") from e
        require_within(diffs, tolerance, str(ckpt), "the PyTorch reference")
    return checkpoint
