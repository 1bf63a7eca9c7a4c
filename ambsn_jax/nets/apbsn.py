"""AP-BSN's network ("DBSNl"), built from AM-BSN's blocks, and how its release maps onto it.

Attribute names follow the release's module names (`branch1`, `head1`, ...) so that the key
map reads one to one (docs/release.md, "AP-BSN").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.nets import keymap as km
from ambsn_jax.nets.architecture import Architecture
from ambsn_jax.nets.blocks import DCB2, Tail, conv
from ambsn_jax.ops.relu import relu


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
    """AP-BSN's branch: centre-masked (2d-1)x(2d-1) conv and two 1x1 (each + ReLU), then a DCB2
    of dilation d.

    The release holds it all in one Sequential `body`; the attribute names here are those of
    `DCB1`'s head, and `torch_port` maps the Sequential's indices onto them.
    """

    def __init__(self, ch: int, dilation: int, num_dcl: int, *, rngs: nnx.Rngs):
        self.masked = conv(ch, ch, 2 * dilation - 1, mask="central", rngs=rngs)
        self.head1 = conv(ch, ch, rngs=rngs)
        self.head2 = conv(ch, ch, rngs=rngs)
        self.body = DCB2(ch, dilation, num_dcl, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
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
        h = relu(self.head(x))
        return self.tail(jnp.concatenate([self.branch1(h), self.branch2(h)], axis=-1))


def config_from_state_dict(sd: km.StateDict) -> APBSNConfig:
    n = km.count_blocks(sd, r"branch1\.body\.(\d+)\.body\..+")
    return APBSNConfig(**km.widths(sd, "AP-BSN"), num_module=n or 9)


def key_map(cfg: APBSNConfig) -> km.KeyMap:
    names = km.head_tail_names()
    for br in ("branch1", "branch2"):
        # One Sequential: masked conv, 1x1, 1x1 (each followed by a ReLU), then the DCl blocks.
        names |= km.conv_names(f"{br}.body.0", (br, "masked"))
        names |= km.conv_names(f"{br}.body.2", (br, "head1"))
        names |= km.conv_names(f"{br}.body.4", (br, "head2"))
        names |= km.dcb2_names(f"{br}.body", (br, "body"), cfg.num_module, offset=6)
    return names


def mask_map(cfg: APBSNConfig) -> km.MaskMap:
    return km.mask_entry("branch1.body.0", ("branch1", "masked"), "central", 3) | km.mask_entry(
        "branch2.body.0", ("branch2", "masked"), "central", 5
    )


ARCHITECTURE = Architecture(
    name="apbsn",
    display_name="AP-BSN",
    network=APBSN,
    config=APBSNConfig,
    signature=r"branch[12]\.body\..+",
    config_from_state_dict=config_from_state_dict,
    key_map=key_map,
    mask_map=mask_map,
    release_tta=False,
    release_config="apbsn_sidd",
)
