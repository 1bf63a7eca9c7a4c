"""AM-BSN: the dual-branch asymmetric-mask blind-spot network, and how its release maps onto it.

The local branch sees through a 3x3 centre-masked conv, the global branch through a 5x5
X-masked one; dilated residual blocks follow (docs/release.md, "AM-BSN").
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.nets import keymap as km
from ambsn_jax.nets.architecture import Architecture
from ambsn_jax.nets.blocks import DCB1, DCB2, Tail, conv
from ambsn_jax.ops.relu import relu


@dataclasses.dataclass(frozen=True)
class AMBSNConfig:
    """Architecture of the network; the defaults are the release's."""

    in_ch: int = 3
    out_ch: int = 3
    base_ch: int = 128
    dcl1_num: int = 2  # DCl blocks in each DCB1 body
    dcl2_num: int = 7  # DCl blocks in each DCB2
    local_mask: str = "central"  # 3x3 masked conv of the local branch
    global_mask: str = "x"  # 5x5 masked conv of the global branch

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


class AMBSN(nnx.Module):
    """Dual-branch blind-spot network: 3x3 centre-masked local branch, 5x5 X-masked global."""

    def __init__(self, config: AMBSNConfig = AMBSNConfig(), *, rngs: nnx.Rngs):
        c = config.base_ch
        self.config = config
        self.head = conv(config.in_ch, c, rngs=rngs)
        self.branch_local = DCB1(c, 2, config.local_mask, 3, config.dcl1_num, rngs=rngs)
        self.branch_global = DCB1(c, 3, config.global_mask, 5, config.dcl1_num, rngs=rngs)
        # The release's conv2_1 and conv2_2 are one module: one parameter, applied twice.
        self.conv2 = conv(c, c, rngs=rngs)
        self.dcb2_local = DCB2(c, 2, config.dcl2_num, rngs=rngs)
        self.dcb2_global = DCB2(c, 3, config.dcl2_num, rngs=rngs)
        self.tail = Tail(4 * c, c, config.out_ch, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = relu(self.head(x))
        local_fm, local_cat = self.branch_local(h)
        global_fm, global_cat = self.branch_global(h)
        g_local = self.dcb2_local(relu(self.conv2(local_cat)))
        g_global = self.dcb2_global(relu(self.conv2(global_cat)))
        # Channel order of the release's concatenation: global before local in the second half.
        return self.tail(jnp.concatenate([local_fm, global_fm, g_global, g_local], axis=-1))


def config_from_state_dict(sd: km.StateDict) -> AMBSNConfig:
    dcl1 = km.count_blocks(sd, r"branch_local\.body\.(\d+)\.body\..+")
    dcl2 = km.count_blocks(sd, r"dc_branchl2_local\.body\.(\d+)\.body\..+")
    return AMBSNConfig(**km.widths(sd, "AM-BSN"), dcl1_num=dcl1 or 2, dcl2_num=dcl2 or 7)


def key_map(cfg: AMBSNConfig) -> km.KeyMap:
    names = km.head_tail_names()
    for br in ("branch_local", "branch_global"):
        names |= km.dcb1_names(br, (br,), cfg.dcl1_num)
    names |= km.conv_names("conv2_1.0", ("conv2",))
    names |= km.conv_names("conv2_2.0", ("conv2",))
    for side in ("local", "global"):
        names |= km.dcb2_names(f"dc_branchl2_{side}.body", (f"dcb2_{side}",), cfg.dcl2_num)
    return names


def mask_map(cfg: AMBSNConfig) -> km.MaskMap:
    return km.mask_entry("branch_local.head.0", ("branch_local", "masked"), cfg.local_mask, 3) | km.mask_entry(
        "branch_global.head.0", ("branch_global", "masked"), cfg.global_mask, 5
    )


ARCHITECTURE = Architecture(
    name="ambsn",
    display_name="AM-BSN",
    network=AMBSN,
    config=AMBSNConfig,
    signature=r"branch_(local|global)\..+",
    config_from_state_dict=config_from_state_dict,
    key_map=key_map,
    mask_map=mask_map,
    release_tta=True,
    release_config="sidd",
)
