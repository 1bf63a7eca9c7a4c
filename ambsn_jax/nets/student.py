"""The fast student: a compact non-blind U-Net that distillation trains to reproduce a
blind-spot teacher's full default inference in one pass (docs/student.md).

It is this project's own network, not a release's: its PyTorch twin (`convert.reference.Student`)
and its state-dict keys are ours, written so that the key map reads one to one, and the
`.pth` / ONNX export paths of the family apply to it unchanged.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.nets import keymap as km
from ambsn_jax.errors import UserError
from ambsn_jax.nets.architecture import Architecture
from ambsn_jax.nets.blocks import conv
from ambsn_jax.ops.relu import relu


@dataclasses.dataclass(frozen=True)
class StudentConfig:
    """Width and depth of the U-Net. Level i has base_ch * 2**i channels at 1 / 2**i of the
    resolution; `blocks` 3x3 conv + ReLU layers per level on each side."""

    in_ch: int = 3
    out_ch: int = 3
    base_ch: int = 32
    depth: int = 3  # times the resolution is halved
    blocks: int = 2

    def __post_init__(self):
        for name in ("in_ch", "out_ch", "base_ch", "blocks"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1")
        if self.depth < 0:
            raise ValueError("depth must not be negative")

    def widths(self) -> list[int]:
        return [self.base_ch * 2**i for i in range(self.depth + 1)]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# He initialisation: a plain ReLU stack has no residual path to carry the signal, and PyTorch's
# default (a third of He's variance) shrinks it ~0.4x a layer, which left a depth-3 student's
# coarse levels silent and its validation PSNR flat in the first measured run.
_HE = nnx.initializers.variance_scaling(2.0, "fan_in", "truncated_normal")


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs) -> nnx.Conv:
    return conv(cin, cout, k, init=_HE, rngs=rngs)


def _stack(cin: int, cout: int, blocks: int, rngs: nnx.Rngs) -> nnx.List:
    return nnx.List([_conv(cin if j == 0 else cout, cout, 3, rngs) for j in range(blocks)])


def _run(stack: nnx.List, x: jax.Array) -> jax.Array:
    for layer in stack:
        x = relu(layer(x))
    return x


def _halve(x: jax.Array) -> jax.Array:
    """2x2 average pooling (sides even: the input is padded to a multiple of 2**depth)."""
    n, h, w, c = x.shape
    return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _double(x: jax.Array) -> jax.Array:
    """Nearest-neighbour 2x upsampling."""
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class Student(nnx.Module):
    """U-Net on x / 255 that predicts the noise: out = x + 255 * tail(features).

    Down: 2x2 average pooling, then the level's convs (the first widens). Up: a 1x1 conv to
    the finer level's width, nearest 2x, added to that level's skip (an addition, not a
    concatenation: half the cost of the decoder's first conv). The input is padded by edge
    replication to a multiple of 2**depth and the output cropped back, so any size works.
    The tail starts at zero: the untrained student returns its input.
    """

    def __init__(self, config: StudentConfig = StudentConfig(), *, rngs: nnx.Rngs):
        self.config = config
        w, b = config.widths(), config.blocks
        self.head = _conv(config.in_ch, w[0], 3, rngs)
        self.enc = nnx.List([_stack(w[max(i - 1, 0)], w[i], b, rngs) for i in range(config.depth + 1)])
        self.up = nnx.List([_conv(w[i + 1], w[i], 1, rngs) for i in range(config.depth)])
        self.dec = nnx.List([_stack(w[i], w[i], b, rngs) for i in range(config.depth)])
        self.tail = conv(w[0], config.out_ch, 3, init=nnx.initializers.zeros_init(), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        h, w = x.shape[1:3]
        m = 2**self.config.depth
        x = jnp.pad(x, ((0, 0), (0, -h % m), (0, -w % m), (0, 0)), mode="edge")
        f = _run(self.enc[0], relu(self.head(x / 255.0)))
        skips = []
        for stack in self.enc[1:]:
            skips.append(f)
            f = _run(stack, _halve(f))
        for i in reversed(range(self.config.depth)):
            f = _run(self.dec[i], skips[i] + _double(self.up[i](f)))
        return (x + 255.0 * self.tail(f))[:, :h, :w]


def config_from_state_dict(sd: km.StateDict) -> StudentConfig:
    head, tail = sd.get("head.weight"), sd.get("tail.weight")
    if head is None or head.ndim != 4 or tail is None or tail.ndim != 4:
        raise UserError("state dict has no 4-D 'head.weight' and 'tail.weight': not a student checkpoint")
    levels = km.count_blocks(sd, r"enc\.(\d+)\.\d+\..+")
    blocks = km.count_blocks(sd, r"enc\.0\.(\d+)\..+")
    return StudentConfig(
        in_ch=head.shape[1], out_ch=tail.shape[0], base_ch=head.shape[0], depth=max(levels - 1, 0), blocks=blocks or 1
    )


def key_map(cfg: StudentConfig) -> km.KeyMap:
    names = km.conv_names("head", ("head",)) | km.conv_names("tail", ("tail",))
    for i in range(cfg.depth + 1):
        for j in range(cfg.blocks):
            names |= km.conv_names(f"enc.{i}.{j}", ("enc", i, j))
    for i in range(cfg.depth):
        names |= km.conv_names(f"up.{i}", ("up", i))
        for j in range(cfg.blocks):
            names |= km.conv_names(f"dec.{i}.{j}", ("dec", i, j))
    return names


def mask_map(cfg: StudentConfig) -> km.MaskMap:
    return {}  # not a blind-spot network: nothing is masked


ARCHITECTURE = Architecture(
    name="student",
    display_name="student U-Net",
    network=Student,
    config=StudentConfig,
    signature=r"enc\.\d+\.\d+\.weight",
    config_from_state_dict=config_from_state_dict,
    key_map=key_map,
    mask_map=mask_map,
    release_tta=False,
    release_config="distill_sidd",
    release_train_pd=1,
    release_pd_pad=0,
    blind_spot=False,
)
