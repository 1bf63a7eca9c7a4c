"""AM-BSN's predecessors, AP-BSN and MM-BSN, built from AM-BSN's blocks (spec: `../shared/spec/APBSN_MMBSN.md`).

Attribute names follow the releases' module names (`branch1`, `branch6_2`, ...) so that
`torch_port` maps their checkpoints one to one. `ARCHITECTURES` names every network of the
family as checkpoint metadata records it.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.model import AMBSN, DCB1, DCB2, AMBSNConfig, Tail, conv


@dataclasses.dataclass(frozen=True)
class APBSNConfig:
    """AP-BSN's network ("DBSNl"); the defaults are the release's."""

    in_ch: int = 3
    out_ch: int = 3
    base_ch: int = 128
    num_module: int = 9  # DCl blocks in each branch (the release's bsn_num_module)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class DBSNBranch(nnx.Module):
    """AP-BSN's branch: centre-masked (2s-1)x(2s-1) conv and two 1x1 (each + ReLU), then a DCB2.

    The release holds it all in one Sequential `body`; the attribute names here are those of
    `DCB1`'s head, and `torch_port` maps the Sequential's indices onto them.
    """

    def __init__(self, ch: int, stride: int, num_dcl: int, *, rngs: nnx.Rngs):
        self.masked = conv(ch, ch, 2 * stride - 1, mask="central", rngs=rngs)
        self.head1 = conv(ch, ch, rngs=rngs)
        self.head2 = conv(ch, ch, rngs=rngs)
        self.body = DCB2(ch, stride, num_dcl, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        relu = jax.nn.relu
        return self.body(relu(self.head2(relu(self.head1(relu(self.masked(x)))))))


class APBSN(nnx.Module):
    """AP-BSN: two centre-masked branches (3x3 with dilation 2, 5x5 with dilation 3), one tail."""

    def __init__(self, config: APBSNConfig = APBSNConfig(), *, rngs: nnx.Rngs):
        c = config.base_ch
        self.config = config
        self.head = conv(config.in_ch, c, rngs=rngs)
        self.branch1 = DBSNBranch(c, 2, config.num_module, rngs=rngs)
        self.branch2 = DBSNBranch(c, 3, config.num_module, rngs=rngs)
        self.tail = Tail(2 * c, c, config.out_ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.head(x))
        return self.tail(jnp.concatenate([self.branch1(h), self.branch2(h)], axis=-1))


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
        relu = jax.nn.relu
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


Model = AMBSN | APBSN | MMBSN
ModelConfig = AMBSNConfig | APBSNConfig | MMBSNConfig

# Architecture name, as checkpoint metadata and `convert/torch2flax.py --arch` spell it ->
# the network and its config.
ARCHITECTURES: dict[str, tuple[type[nnx.Module], type]] = {
    "ambsn": (AMBSN, AMBSNConfig),
    "apbsn": (APBSN, APBSNConfig),
    "mmbsn": (MMBSN, MMBSNConfig),
}


def arch_of(config: ModelConfig) -> str:
    """The architecture name of a network config."""
    return next(name for name, (_, cls) in ARCHITECTURES.items() if isinstance(config, cls))


def build(arch: str, config: dict[str, Any], rngs: nnx.Rngs) -> Model:
    """A freshly initialised network `arch` of config `config` (a `to_dict()`; missing keys: defaults)."""
    model_cls, config_cls = ARCHITECTURES[arch]
    return model_cls(config_cls(**config), rngs=rngs)
