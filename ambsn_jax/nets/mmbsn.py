"""MM-BSN's multi-mask network, built from AM-BSN's blocks, and how its release maps onto it.

Attribute names follow the release's module names (`branch6_2`, ...) so that the key map
reads one to one (docs/release.md, "MM-BSN").
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.nets import keymap as km
from ambsn_jax.errors import UserError
from ambsn_jax.nets.architecture import Architecture
from ambsn_jax.nets.blocks import DCB1, DCB2, Tail, conv
from ambsn_jax.ops.relu import relu


# MM-BSN's mask kinds in the order its release visits their branches (which fixes the channel
# order of every concatenation, whatever the order in the mask string), each with the N of its
# module names `branchN_1` / `branchN_2` and the blind-spot pattern (`masks.py`) it gets.
# The order is not the numbering: "hui" (8) comes last.
MM_KINDS: dict[str, tuple[int, str]] = {
    "o": (1, "central"),
    # The release passes "col" / "row" to a branch that tests for "c" / "r", so both fall
    # through to centre masks: kept, so that its checkpoints compute what they computed there.
    "c": (2, "central"),
    "r": (3, "central"),
    "sz": (4, "sz"),
    "fsz": (5, "fsz"),
    "a45": (6, "a45"),
    "a135": (7, "a135"),
    "cha": (9, "cha"),
    "fcha": (10, "x"),
    "hui": (8, "hui"),
}


def mm_branch_names(kind: str) -> tuple[str, str]:
    """The release's names of the 3x3 (dilation 2) and the 5x5 (dilation 3) branch of `kind`."""
    n = MM_KINDS[kind][0]
    return f"branch{n}_1", f"branch{n}_2"


@dataclasses.dataclass(frozen=True)
class MMBSNConfig:
    """MM-BSN's network; the defaults are the released configuration ('o_a45')."""

    in_ch: int = 3
    out_ch: int = 3
    base_ch: int = 128
    dcl1_num: int = 2  # DCl blocks in each DCB1 body
    dcl2_num: int = 7  # DCl blocks in each DCB2
    mask_type: str = "o_a45"  # mask kinds joined by "_", any order (see MM_KINDS)

    def __post_init__(self) -> None:
        kinds = self.mask_type.split("_")
        # The release builds no branch for an unknown or repeated kind but still counts it in
        # conv2's and the tail's widths, so such a network fails at its first forward.
        unknown = [k for k in kinds if k not in MM_KINDS]
        if unknown or len(set(kinds)) != len(kinds):
            raise ValueError(
                f"mask_type {self.mask_type!r}: expected distinct kinds of {', '.join(MM_KINDS)} joined by '_'"
            )

    def kinds(self) -> tuple[str, ...]:
        """The kinds of `mask_type` in the release's branch order."""
        present = set(self.mask_type.split("_"))
        return tuple(k for k in MM_KINDS if k in present)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class MMBSN(nnx.Module):
    """MM-BSN: a pair of AM-BSN DCB1 branches (3x3 and 5x5 masks) per mask kind, fused per
    mask size by one shared 1x1 conv and a DCB2 each."""

    def __init__(self, config: MMBSNConfig = MMBSNConfig(), *, rngs: nnx.Rngs):
        c = config.base_ch
        n_kinds = len(config.kinds())
        self.config = config
        self.head = conv(config.in_ch, c, rngs=rngs)
        for kind in config.kinds():
            mask = MM_KINDS[kind][1]
            name3, name5 = mm_branch_names(kind)
            setattr(self, name3, DCB1(c, 2, mask, 3, config.dcl1_num, rngs=rngs))
            setattr(self, name5, DCB1(c, 3, mask, 5, config.dcl1_num, rngs=rngs))
        # The release's conv2_1 and conv2_2 are one module: one parameter, applied twice.
        self.conv2 = conv(n_kinds * c, c, rngs=rngs)
        self.dcb2_mask3 = DCB2(c, 2, config.dcl2_num, rngs=rngs)
        self.dcb2_mask5 = DCB2(c, 3, config.dcl2_num, rngs=rngs)
        self.tail = Tail((2 + 2 * n_kinds) * c, c, config.out_ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = relu(self.head(x))
        fms, cats3, cats5 = [], [], []
        for kind in self.config.kinds():
            name3, name5 = mm_branch_names(kind)
            fm3, cat3 = getattr(self, name3)(h)
            fm5, cat5 = getattr(self, name5)(h)
            fms += [fm3, fm5]
            cats3.append(cat3)
            cats5.append(cat5)
        m3 = self.dcb2_mask3(relu(self.conv2(jnp.concatenate(cats3, axis=-1))))
        m5 = self.dcb2_mask5(relu(self.conv2(jnp.concatenate(cats5, axis=-1))))
        return self.tail(jnp.concatenate([*fms, m3, m5], axis=-1))


_KIND_OF_NUMBER = {n: kind for kind, (n, _) in MM_KINDS.items()}


def config_from_state_dict(sd: km.StateDict) -> MMBSNConfig:
    numbers = {int(m.group(1)) for k in sd if (m := re.match(r"branch(\d+)_[12]\.", k))}
    # A branch number of no kind is left out here and its keys are refused as unexpected.
    present = {_KIND_OF_NUMBER[n] for n in numbers if n in _KIND_OF_NUMBER}
    if not present:
        raise UserError("state dict has no MM-BSN branch (branchN_1 / branchN_2)")
    dcl1 = km.count_blocks(sd, r"branch\d+_[12]\.body\.(\d+)\.body\..+")
    dcl2 = km.count_blocks(sd, r"dc_branchl2_mask3\.body\.(\d+)\.body\..+")
    # Written in branch order; the network does not depend on the order anyway.
    mask_type = "_".join(kind for kind in MM_KINDS if kind in present)
    return MMBSNConfig(**km.widths(sd, "MM-BSN"), dcl1_num=dcl1 or 2, dcl2_num=dcl2 or 7, mask_type=mask_type)


def key_map(cfg: MMBSNConfig) -> km.KeyMap:
    names = km.head_tail_names()
    for kind in cfg.kinds():
        for br in mm_branch_names(kind):
            names |= km.dcb1_names(br, (br,), cfg.dcl1_num)
    names |= km.conv_names("conv2_1.0", ("conv2",))
    names |= km.conv_names("conv2_2.0", ("conv2",))
    for size in ("mask3", "mask5"):
        names |= km.dcb2_names(f"dc_branchl2_{size}.body", (f"dcb2_{size}",), cfg.dcl2_num)
    return names


def mask_map(cfg: MMBSNConfig) -> km.MaskMap:
    masks: km.MaskMap = {}
    for kind in cfg.kinds():
        name3, name5 = mm_branch_names(kind)
        pattern = MM_KINDS[kind][1]
        masks |= km.mask_entry(f"{name3}.head.0", (name3, "masked"), pattern, 3)
        masks |= km.mask_entry(f"{name5}.head.0", (name5, "masked"), pattern, 5)
    return masks


ARCHITECTURE = Architecture(
    name="mmbsn",
    display_name="MM-BSN",
    network=MMBSN,
    config=MMBSNConfig,
    signature=r"branch\d+_[12]\..+",
    config_from_state_dict=config_from_state_dict,
    key_map=key_map,
    mask_map=mask_map,
    release_tta=False,
    release_config="mmbsn_sidd",
)
