"""TM-BSN, the triangular-masked blind-spot network, and how its release maps onto it (docs/tmbsn.md).

Every 3x3 conv of the backbone keeps only the taps on and above its diagonal, so a stack of
them sees a half-plane that includes the centre. The backbone runs on the input in four
rotations; its features are shifted by the hole size, rotated back and concatenated on the
channels, and a 1x1 head fuses them: the rotated half-planes, shifted, leave out a hole around
each pixel (none at hole 0). Attribute names are the release's module names, so that the key
map reads one to one.
"""

from __future__ import annotations

import dataclasses
import re

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.errors import UserError
from ambsn_jax.nets import keymap as km
from ambsn_jax.nets.architecture import Architecture
from ambsn_jax.nets.blocks import conv
from ambsn_jax.ops.relu import relu

BENCHMARK_HOLE = 2  # the release's benchmark_sidd.py --h
TRAIN_HOLE = 5  # train_tmbsn.py's forward
BENCHMARK_PAD = 16  # benchmark_sidd.py --pad, reflected


@dataclasses.dataclass(frozen=True)
class TMBSNConfig:
    """TM-BSN's network; the defaults are the release's (1.35M parameters)."""

    in_ch: int = 3  # also the output's channels, as in the release
    base_ch: int = 48  # the release's feat_channels
    blocks: int = 5  # the release's block_nums: residual-in-residual blocks, and residual blocks in each

    def __post_init__(self):
        for name in ("in_ch", "base_ch", "blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _masked(cin: int, cout: int, rngs: nnx.Rngs) -> nnx.Conv:
    return conv(cin, cout, 3, mask="triu", rngs=rngs)


class ResBlock(nnx.Module):
    def __init__(self, ch: int, *, rngs: nnx.Rngs):
        self.conv1 = _masked(ch, ch, rngs)
        self.conv2 = _masked(ch, ch, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return x + self.conv2(relu(self.conv1(x)))


class RIRBlock(nnx.Module):
    def __init__(self, n: int, ch: int, *, rngs: nnx.Rngs):
        self.res_blocks = nnx.List([ResBlock(ch, rngs=rngs) for _ in range(n)])
        self.conv_out = _masked(ch, ch, rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h = x
        for block in self.res_blocks:
            h = block(h)
        return x + self.conv_out(h)


class BlindNet(nnx.Module):
    """The release's `Blind_Net` (held as `unet`): masked head, RIR blocks, masked conv, long skip."""

    def __init__(self, config: TMBSNConfig, *, rngs: nnx.Rngs):
        c, n = config.base_ch, config.blocks
        self.conv1 = _masked(config.in_ch, c, rngs)
        self.conv2 = _masked(c, c, rngs)
        self.RIR_blocks = nnx.List([RIRBlock(n, c, rngs=rngs) for _ in range(n)])

    def __call__(self, x: jax.Array) -> jax.Array:
        x1 = self.conv1(x)
        h = x1
        for block in self.RIR_blocks:
            h = block(h)
        return x1 + self.conv2(h)


# The release's rotations in NHWC (axis 1: rows, 2: columns), as it writes them: 90 is a
# transpose then a column flip, 270 a transpose then a row flip; each `_UNDO` inverts its own.
def _t(x: jax.Array) -> jax.Array:
    return x.swapaxes(1, 2)


_ROTATE = (lambda x: x, lambda x: _t(x)[:, :, ::-1], lambda x: x[:, ::-1, ::-1], lambda x: _t(x)[:, ::-1])
_UNDO = (lambda x: x, lambda x: _t(x)[:, ::-1], lambda x: x[:, ::-1, ::-1], lambda x: _t(x)[:, :, ::-1])


def shift_features(f: jax.Array, hole: int) -> jax.Array:
    """[down by hole, left by hole] on the channels; the release's shift_u / shift_r, zeros
    moving in. Hole 0 concatenates the unshifted features twice."""
    if hole < 0:
        raise ValueError(f"hole size {hole}: must not be negative")
    if hole == 0:
        return jnp.concatenate([f, f], axis=-1)
    h, w = f.shape[1:3]
    down = jnp.pad(f, ((0, 0), (hole, 0), (0, 0), (0, 0)))[:, :h]
    left = jnp.pad(f, ((0, 0), (0, 0), (0, hole), (0, 0)))[:, :, hole : hole + w]
    return jnp.concatenate([down, left], axis=-1)


class TMBSN(nnx.Module):
    """TM-BSN on images (N, H, W, C) in 0..255 (the release works on 0..1: scaled here).

    Any H x W: the release stacks the four rotations on the batch axis, which needs H == W;
    here a non-square input runs the backbone twice, once on the 0 / 180 degree rotations and
    once on the 90 / 270 ones, which computes per rotation what the release computes on a
    square (docs/tmbsn.md).
    """

    def __init__(self, config: TMBSNConfig = TMBSNConfig(), *, rngs: nnx.Rngs):
        c, ch = config.base_ch, config.in_ch
        self.config = config
        self.unet = BlindNet(config, rngs=rngs)
        self.nin_A = conv(8 * c, 8 * c, rngs=rngs)
        self.nin_B = conv(8 * c, 2 * c, rngs=rngs)
        self.nin_C = conv(2 * c, ch, rngs=rngs)

    def features(self, x: jax.Array) -> list[jax.Array]:
        """The backbone's features of the four rotations of x (0..255), in the release's order."""
        rotations = [rotate(x / 255.0) for rotate in _ROTATE]
        n = x.shape[0]
        groups = [(0, 1, 2, 3)] if x.shape[1] == x.shape[2] else [(0, 2), (1, 3)]
        feats: dict[int, jax.Array] = {}
        for group in groups:
            out = self.unet(jnp.concatenate([rotations[r] for r in group]))
            feats |= {r: out[i * n : (i + 1) * n] for i, r in enumerate(group)}
        return [feats[r] for r in range(4)]

    def head(self, feats: list[jax.Array], hole: int) -> jax.Array:
        """Shift by `hole`, rotate back, concatenate, 1x1 head: the output in 0..255."""
        z = jnp.concatenate([undo(shift_features(f, hole)) for undo, f in zip(_UNDO, feats)], axis=-1)
        z = relu(self.nin_B(relu(self.nin_A(z))))
        return 255.0 * self.nin_C(z)

    def __call__(self, x: jax.Array, hole: int = BENCHMARK_HOLE) -> jax.Array:
        return self.head(self.features(x), hole)

    def forward_outs(self, x: jax.Array, holes: tuple[int, ...]) -> list[jax.Array]:
        """The outputs at several hole sizes from one backbone pass (the release's `forward_outs`)."""
        feats = self.features(x)
        return [self.head(feats, h) for h in holes]


def masked_convs(cfg: TMBSNConfig) -> list[str]:
    """The release's names of the masked convs (every conv of `unet`)."""
    names = ["unet.conv1", "unet.conv2"]
    for i in range(cfg.blocks):
        rir = f"unet.RIR_blocks.{i}"
        names += [f"{rir}.res_blocks.{j}.conv{k}" for j in range(cfg.blocks) for k in (1, 2)]
        names.append(f"{rir}.conv_out")
    return names


def _path(torch_name: str) -> km.FlaxPath:
    return tuple(int(p) if p.isdigit() else p for p in torch_name.split("."))


def config_from_state_dict(sd: km.StateDict) -> TMBSNConfig:
    head = sd.get("unet.conv1.weight")
    if head is None or head.ndim != 4:
        raise UserError("state dict has no 4-D 'unet.conv1.weight': not a TM-BSN checkpoint")
    rirs = km.count_blocks(sd, r"unet\.RIR_blocks\.(\d+)\..+")
    res = {m.group(1) for k in sd if (m := re.fullmatch(r"unet\.RIR_blocks\.0\.res_blocks\.(\d+)\..+", k))}
    if rirs and res and len(res) != rirs:
        # The release's one block_nums sets both counts; another shape is no TM-BSN of its.
        raise UserError(f"state dict has {rirs} RIR blocks of {len(res)} residual blocks: TM-BSN has as many of each")
    return TMBSNConfig(in_ch=head.shape[1], base_ch=head.shape[0], blocks=rirs or 5)


def key_map(cfg: TMBSNConfig) -> km.KeyMap:
    names: km.KeyMap = {}
    for name in [*masked_convs(cfg), "nin_A", "nin_B", "nin_C"]:
        names |= km.conv_names(name, _path(name))
    return names


def mask_map(cfg: TMBSNConfig) -> km.MaskMap:
    masks: km.MaskMap = {}
    for name in masked_convs(cfg):
        masks |= km.mask_entry(name, _path(name), "triu", 3)
    return masks


ARCHITECTURE = Architecture(
    name="tmbsn",
    display_name="TM-BSN",
    network=TMBSN,
    config=TMBSNConfig,
    signature=r"unet\.RIR_blocks\.\d+\..+",
    config_from_state_dict=config_from_state_dict,
    key_map=key_map,
    mask_map=mask_map,
    release_tta=False,
    release_config="tmbsn_sidd",
    release_train_pd=1,  # no PD: the hole does what PD does for the others
    release_pd_pad=0,
    # One pass of the input reflected by 16 (`reflect_pad`), no padding inside it, whatever
    # padding a checkpoint was trained with.
    release_inference={"pd_b": 1, "r3": False, "pd_pad": 0, "reflect_pad": BENCHMARK_PAD, "hole": BENCHMARK_HOLE},
    bare_state_dict=True,
)
