"""NBSN: the non-blind U-Net student that the TM-BSN release distils its blind-spot teacher into
(docs/nbsn.md).

Five 2x2 max-pool levels, one 3x3 conv + LeakyReLU(0.1) per level on the way down at C = 48
channels, two per level on the way up at 2C = 96, each up step nearest 2x upsampling and a
concatenation with the skip; the last conv is linear. The release runs it on x / 255 and only on
sizes that divide by 2**5; this port takes 0..255 like every network of the family (it scales
inside) and any size: an odd side is pooled as PyTorch's `ceil_mode` does (the last row's max
over the one row there is) and the upsampled map cropped to its skip's size (docs/nbsn.md,
"Sizes"). On sizes that divide by 2**depth this is the release's network exactly.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.errors import UserError
from ambsn_jax.nets import keymap as km
from ambsn_jax.nets.architecture import Architecture
from ambsn_jax.nets.blocks import conv

SLOPE = 0.1  # the release's LeakyReLU slope, also the `a` of its Kaiming init


@dataclasses.dataclass(frozen=True)
class NBSNConfig:
    """Widths of the U-Net: the encoder has base_ch channels at every level, the decoder
    2 * base_ch; `depth` max-pools (the release: 48 and 5)."""

    in_ch: int = 3
    out_ch: int = 3
    base_ch: int = 48
    depth: int = 5

    def __post_init__(self):
        for name in ("in_ch", "out_ch", "base_ch", "depth"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# The release's init: kaiming_normal_(a=0.1), fan-in, untruncated; biases zero.
_KAIMING = nnx.initializers.variance_scaling(2.0 / (1.0 + SLOPE**2), "fan_in", "normal")


def _conv(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Conv:
    return conv(cin, cout, 3, init=_KAIMING, rngs=rngs)


def _act(x: jax.Array) -> jax.Array:
    return jax.nn.leaky_relu(x, SLOPE)


def _pool(x: jax.Array) -> jax.Array:
    """2x2 max pooling; an odd side gets a window of the one row (column) left (`ceil_mode`)."""
    n, h, w, c = x.shape
    # -inf never wins a max, and every window holds at least one pixel.
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(n, (h + 1) // 2, 2, (w + 1) // 2, 2, c).max(axis=(2, 4))


def _unpool(x: jax.Array, like: jax.Array) -> jax.Array:
    """Nearest 2x upsampling, cropped to the skip `like` (one row less after an odd side)."""
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return up[:, : like.shape[1], : like.shape[2]]


class NBSN(nnx.Module):
    """The release's `N_BSN` on the 0..255 scale: out = 255 * unet(x / 255).

    `enc[i]` is the release's `enc{i+1}`; `dec[i]` holds its `dec{i+1}_2` and `dec{i+1}_1`.
    """

    def __init__(self, config: NBSNConfig = NBSNConfig(), *, rngs: nnx.Rngs):
        self.config = config
        c, d = config.base_ch, config.depth
        self.enc = nnx.List([_conv(config.in_ch if i == 0 else c, c, rngs) for i in range(d + 1)])
        # The deepest decoder level concatenates two encoder maps (2C), the others the decoder's
        # 2C with a C skip.
        self.dec = nnx.List(
            [
                nnx.List([_conv(2 * c if i == d - 1 else 3 * c, 2 * c, rngs),
                          _conv(2 * c, config.out_ch if i == 0 else 2 * c, rngs)])
                for i in range(d)
            ]
        )  # fmt: skip

    def __call__(self, x: jax.Array) -> jax.Array:
        f = _act(self.enc[0](x / 255.0))
        skips = []
        for layer in self.enc[1:]:
            skips.append(f)
            f = _act(layer(_pool(f)))
        for i in reversed(range(self.config.depth)):
            second, first = self.dec[i]
            f = second(jnp.concatenate([_unpool(f, skips[i]), skips[i]], axis=-1))
            f = first(_act(f))
            f = f if i == 0 else _act(f)  # the release's dec1_1 is linear
        return 255.0 * f


def _torch_name(kind: str, i: int, j: int = 0) -> str:
    """The release's module of encoder level i, or decoder level i's conv j (0: `_2`, 1: `_1`)."""
    if kind == "enc":
        return f"enc{i + 1}.conv"
    return "dec1_1" if (i, j) == (0, 1) else f"dec{i + 1}_{2 - j}.conv"


def config_from_state_dict(sd: km.StateDict) -> NBSNConfig:
    first, last = sd.get("enc1.conv.weight"), sd.get("dec1_1.weight")
    if first is None or first.ndim != 4 or last is None or last.ndim != 4:
        raise UserError("state dict has no 4-D 'enc1.conv.weight' and 'dec1_1.weight': not an NBSN checkpoint")
    levels = km.count_blocks(sd, r"enc(\d+)\.conv\..+")
    return NBSNConfig(in_ch=first.shape[1], out_ch=last.shape[0], base_ch=first.shape[0], depth=max(levels - 1, 1))


def key_map(cfg: NBSNConfig) -> km.KeyMap:
    names: km.KeyMap = {}
    for i in range(cfg.depth + 1):
        names |= km.conv_names(_torch_name("enc", i), ("enc", i))
    for i in reversed(range(cfg.depth)):  # the release's order: dec5_2, dec5_1, ..., dec1_1
        for j in range(2):
            names |= km.conv_names(_torch_name("dec", i, j), ("dec", i, j))
    return names


def mask_map(cfg: NBSNConfig) -> km.MaskMap:
    return {}  # not a blind-spot network: nothing is masked


ARCHITECTURE = Architecture(
    name="nbsn",
    display_name="NBSN",
    network=NBSN,
    config=NBSNConfig,
    signature=r"enc\d+\.conv\.weight",
    config_from_state_dict=config_from_state_dict,
    key_map=key_map,
    mask_map=mask_map,
    release_tta=False,
    release_config="distill_nbsn_sidd",
    release_train_pd=1,
    release_pd_pad=0,
    blind_spot=False,
    release_inference={"reflect_pad": 16},  # its benchmark_sidd.py reflects by 16 around the pass
    bare_state_dict=True,
)
