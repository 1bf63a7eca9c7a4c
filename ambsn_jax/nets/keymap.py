"""Building blocks of the releases' state-dict key maps, shared by every network's port.

A key map sends each PyTorch key (`branch_local.head.0.weight`) to the path of the Flax
parameter that holds it (`("branch_local", "masked", "kernel")`); a mask map sends each mask
buffer to the kernel it masks and the pattern it must hold. Modules that a release shares
under two names appear under both. This module needs neither torch nor JAX.
"""

from __future__ import annotations

import re

import numpy as np

from ambsn_jax.errors import UserError
from ambsn_jax.nets.masks import blind_spot_mask

StateDict = dict[str, np.ndarray]
FlaxPath = tuple[str | int, ...]
KeyMap = dict[str, FlaxPath]
MaskMap = dict[str, tuple[FlaxPath, np.ndarray]]


def conv_names(torch_prefix: str, flax_path: FlaxPath) -> KeyMap:
    return {
        f"{torch_prefix}.weight": (*flax_path, "kernel"),
        f"{torch_prefix}.bias": (*flax_path, "bias"),
    }


def dcl_names(torch_seq: str, flax_seq: FlaxPath, n: int, offset: int = 0) -> KeyMap:
    """DCl blocks at torch_seq.{offset}..{offset+n-1} -> flax_seq[0..n-1]."""
    names = {}
    for i in range(n):
        names |= conv_names(f"{torch_seq}.{offset + i}.body.0", (*flax_seq, i, "dilated"))
        names |= conv_names(f"{torch_seq}.{offset + i}.body.2", (*flax_seq, i, "pointwise"))
    return names


def dcb2_names(torch_seq: str, flax_path: FlaxPath, n: int, offset: int = 0) -> KeyMap:
    """A `blocks.DCB2` whose blocks start at torch_seq.{offset}, its 1x1 conv right after them."""
    names = dcl_names(torch_seq, (*flax_path, "body"), n, offset)
    return names | conv_names(f"{torch_seq}.{offset + n}", (*flax_path, "out"))


def dcb1_names(torch_prefix: str, flax_path: FlaxPath, n: int) -> KeyMap:
    """A `blocks.DCB1`; its shared conv1_1 / conv1_2 both map to the one parameter."""
    p = torch_prefix
    names = conv_names(f"{p}.head.0", (*flax_path, "masked"))
    names |= conv_names(f"{p}.head.2", (*flax_path, "head1"))
    names |= conv_names(f"{p}.head.4", (*flax_path, "head2"))
    names |= conv_names(f"{p}.conv1_1.0", (*flax_path, "conv1_1"))
    names |= conv_names(f"{p}.conv1_2.0", (*flax_path, "conv1_1"))
    names |= dcl_names(f"{p}.body", (*flax_path, "body"), n)
    names |= conv_names(f"{p}.body.{n}", (*flax_path, "body_out"))
    return names | conv_names(f"{p}.conv1_3.0", (*flax_path, "conv1_3"))


def head_tail_names() -> KeyMap:
    names = conv_names("head.0", ("head",))
    for i in range(4):
        names |= conv_names(f"tail.{2 * i}", ("tail", "layers", i))
    return names


def mask_entry(torch_conv: str, flax_conv: FlaxPath, kind: str, k: int) -> MaskMap:
    return {f"{torch_conv}.mask": ((*flax_conv, "kernel"), blind_spot_mask(kind, k))}


def count_blocks(sd: StateDict, pattern: str) -> int:
    """How many blocks `pattern` finds (group 1: the block index).

    A block counts if any of its tensors is there, so that a lost tensor is reported as
    missing rather than silently shrinking the architecture; where none is found, callers
    take the release's count, whose keys are then reported missing.
    """
    return len({m.group(1) for k in sd if (m := re.fullmatch(pattern, k))})


def widths(sd: StateDict, display_name: str) -> dict[str, int]:
    """in_ch, base_ch and out_ch, read off the head and the tail."""
    head = sd.get("head.0.weight")
    if head is None or head.ndim != 4:
        raise UserError(f"state dict has no 4-D 'head.0.weight': not an {display_name} checkpoint")
    tail = sd.get("tail.6.weight")
    out_ch = tail.shape[0] if tail is not None and tail.ndim == 4 else 3
    return {"in_ch": head.shape[1], "base_ch": head.shape[0], "out_ch": out_ch}
