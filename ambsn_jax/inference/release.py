"""The release's inference as pure JAX functions (docs/release.md, "Inference").

`pd_forward` is the release's `forward(img, pd)`; `denoise` its `denoise(x)`: PD-2 / PD-a
fusion ("TTA"), then random-replacing refinement (R3). `default_inference` derives the
switches from a checkpoint's metadata.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ambsn_jax.errors import UserError
from ambsn_jax.ops.pd import pd_down, pd_up
from ambsn_jax.ops.precision import default_precision

Network = Callable[[jax.Array], jax.Array]

# The orientations (quarter turns k, flipped first or not) a self-ensemble of each size averages:
# every one a group (identity; + the half turn; the four rotations; all eight), so each size
# treats the image's axes alike. The order within them is that of the batch `self_ensemble` runs.
_ROTATIONS = tuple((k, False) for k in range(4))
ENSEMBLES: dict[int, tuple[tuple[int, bool], ...]] = {
    1: _ROTATIONS[:1], 2: _ROTATIONS[::2], 4: _ROTATIONS, 8: _ROTATIONS + tuple((k, True) for k in range(4)),
}  # fmt: skip


def ensemble_size(value: bool | int) -> int:
    """A self-ensemble's size from a count of `ENSEMBLES`, or a switch (True: all 8, False: 1)."""
    if isinstance(value, bool):
        return 8 if value else 1
    if value not in ENSEMBLES:
        raise UserError(f"self-ensemble of {value!r} orientations: give one of {', '.join(map(str, ENSEMBLES))}")
    return value


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Switches of the release's `denoise`. `pd_a` and `pd_pad` are those the weights were
    trained with (`default_inference` takes them from the metadata); the other defaults are
    the release's."""

    pd_a: int  # training PD factor, also the second TTA pass
    pd_pad: int  # zero padding of every PD sub-image, and R3's reflection
    pd_b: int = 2  # inference PD factor
    tta: bool = True  # fuse PD pd_b (weight 0.8) and PD pd_a (weight 0.2)
    r3: bool = True
    r3_t: int = 8
    r3_p: float = 0.16
    self_ensemble: int = 1  # how many rotations / flips to average (`ENSEMBLES`); True / False read as 8 / 1
    r3_batched: bool = False  # R3's T passes as one batch (more memory; on GPUs maybe faster) instead of in turn
    precision: str = "highest"  # of the convolutions: highest, tf32 or bf16 (`ops.precision`)
    hole: int | None = None  # TM-BSN's hole size, passed to the network at every call; None: a network without one
    winograd: bool = False  # 3x3 convs by Winograd's algorithm on CPUs (`ops.winograd`); opt-in until measured end to end
    # Reflection padding of the whole input around everything above, cropped after: the TM-BSN
    # and NBSN releases' benchmark pads by 16 (their `--pad`); 0 for the other networks.
    reflect_pad: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "self_ensemble", ensemble_size(self.self_ensemble))

    def release_options(self) -> dict[str, Any]:
        """The switches under the release's argument names, as reports record them."""
        options = {
            "pd_a": self.pd_a, "pd_b": self.pd_b, "pd_pad": self.pd_pad, "R3": self.r3, "R3_T": self.r3_t,
            "R3_p": self.r3_p, "tta": self.tta, "self_ensemble": self.self_ensemble, "precision": self.precision,
            **({"pad": self.reflect_pad} if self.reflect_pad else {}),
            "winograd": self.winograd,
        }  # fmt: skip
        if self.hole is not None:  # TM-BSN's benchmark_sidd.py --h
            options["h"] = self.hole
        return options


def default_inference(meta: Any, **switches: Any) -> InferenceConfig:
    """The release's inference for weights of checkpoint metadata `meta` (a `CheckpointMeta`),
    with `switches` (fields of `InferenceConfig`) changed.

    AM-BSN fuses the PD-2 pass with a pass at the PD factor it was trained with (the release:
    5); AP-BSN and MM-BSN have no such fusion: PD 2, then R3, and `tta=True` keeps it so.
    A non-blind network (the distilled student) sees every pixel: one pass of the network, no
    PD, no fusion, no R3 (`tta=True` and `r3=True` keep them off; self-ensemble still applies).
    The self-ensemble's size is the metadata's (`meta.self_ensemble`; absent: one pass).
    A record's `release_inference` sets what its release's test script does instead (TM-BSN:
    one pass of its input reflected by 16, at hole size 2, no R3; NBSN: its input reflected
    by 16), whatever the metadata says.
    The precision defaults to the platform's (`ops.precision.default_precision`).
    """
    record = meta.architecture
    release = InferenceConfig(
        pd_a=meta.train_pd, pd_pad=meta.train_pd_pad, tta=record.release_tta, precision=default_precision(),
        self_ensemble=meta.self_ensemble or 1,
    )
    if not record.blind_spot:
        release = dataclasses.replace(release, pd_b=1, pd_pad=0, r3=False)
    release = dataclasses.replace(release, **record.release_inference)
    cfg = dataclasses.replace(release, **switches)
    return dataclasses.replace(cfg, tta=cfg.tta and release.tta, r3=cfg.r3 and release.r3)


def _crop(x: jax.Array, p: int) -> jax.Array:
    # x[:, p:-p] is empty for p = 0; the release guards the same case.
    return x[:, p : x.shape[1] - p, p : x.shape[2] - p]


def _pad_to_multiple(x: jax.Array, m: int) -> jax.Array:
    """Zero-pad at the bottom and right so that H and W divide by m."""
    h, w = x.shape[1:3]
    return jnp.pad(x, ((0, 0), (0, -h % m), (0, -w % m), (0, 0)))


def pd_forward(net: Network, x: jax.Array, pd: int, pad: int = 2, perm: jax.Array | None = None) -> jax.Array:
    """The release's `forward(img, pd)`: PD, blind-spot network, inverse PD."""
    if pd > 1:
        return pd_up(net(pd_down(x, pd, pad, perm)), pd, pad, perm)
    return _crop(net(jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))), pad)


def r3_masks(key: jax.Array, shape: tuple[int, ...], cfg: InferenceConfig) -> jax.Array:
    """The R3 replacement masks: (T, *shape) booleans, per pixel and per channel."""
    return jax.random.uniform(key, (cfg.r3_t, *shape)) < cfg.r3_p


def denoise(
    net: Network,
    x: jax.Array,
    key: jax.Array | None,
    cfg: InferenceConfig,
    masks: jax.Array | None = None,
) -> jax.Array:
    """Denoise a batch (N, H, W, C) in 0..255, as the release's `denoise` (no rounding).

    R3 draws its masks from `key`, or takes them explicitly through `masks` (shape
    `(cfg.r3_t, *x_r3.shape)` where x_r3 is x, padded to a multiple of pd_b when TTA is off).
    """
    if cfg.reflect_pad:
        p = cfg.reflect_pad
        x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
        return _crop(denoise(net, x, key, dataclasses.replace(cfg, reflect_pad=0), masks), p)
    h, w = x.shape[1:3]
    if cfg.tta:
        a = pd_forward(net, _pad_to_multiple(x, cfg.pd_b), cfg.pd_b, cfg.pd_pad)
        b = pd_forward(net, _pad_to_multiple(x, cfg.pd_a), cfg.pd_a, cfg.pd_pad)
        # The release crops only B and so crashes on odd sizes: it meant both cropped.
        y = 0.2 * b[:, :h, :w] + 0.8 * a[:, :h, :w]
    else:
        # Here the release runs R3 on the padded image, which we keep for its exact pixels;
        # it then returns the padded size (61x80 in, 62x80 out): we crop back to h x w.
        x = _pad_to_multiple(x, cfg.pd_b)
        y = pd_forward(net, x, cfg.pd_b, cfg.pd_pad)
    if not cfg.r3:
        return y[:, :h, :w]
    if masks is None:
        masks = r3_masks(key, x.shape, cfg)
    p = cfg.pd_pad
    z = jnp.where(masks, x[None], y[None])
    z = jnp.pad(z, ((0, 0), (0, 0), (p, p), (p, p), (0, 0)), mode="reflect")
    # By default the T refinement passes run one after another: as one batch of T they were
    # 1.2x slower on a CPU and took 3x the memory (bench/NOTES.md; bench/gpu.sh measures GPUs).
    if cfg.r3_batched:
        t, n = z.shape[:2]
        out = _crop(net(z.reshape(t * n, *z.shape[2:])), p).reshape(t, n, *x.shape[1:])
    else:
        out = jax.lax.map(lambda zt: _crop(net(zt), p), z)
    return jnp.mean(out, axis=0)[:, :h, :w]


def postprocess(y: jax.Array | np.ndarray) -> jax.Array | np.ndarray:
    """The release's rounding for metrics and saved images: +0.5, floor, clip to 0..255.
    NumPy in, NumPy out (the same float32 values): op-by-op JAX on the host's results would
    compile each op anew for every new shape."""
    xp = np if isinstance(y, np.ndarray) else jnp
    return xp.clip(xp.floor(y + np.float32(0.5)), np.float32(0.0), np.float32(255.0))


def _orient(x: jax.Array, k: int, flip: bool) -> jax.Array:
    return jnp.rot90(x[:, :, ::-1] if flip else x, k, axes=(1, 2))


def _unorient(y: jax.Array, k: int, flip: bool) -> jax.Array:
    y = jnp.rot90(y, -k, axes=(1, 2))
    return y[:, :, ::-1] if flip else y


def self_ensemble(
    fn: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, key: jax.Array, size: int = 8
) -> jax.Array:
    """Mean of `fn(x', key)` over the `size` orientations x' of x that `ENSEMBLES` lists, each
    undone after.

    Orientations of equal shape run as one batch: two calls of `fn`, or one if H == W.
    """
    n, h, w = x.shape[:3]
    orients = ENSEMBLES[size]
    groups = [orients] if h == w else [g for g in ([o for o in orients if o[0] % 2 == r] for r in (0, 1)) if g]
    total = jnp.zeros(x.shape, jnp.float32)
    for group, gkey in zip(groups, jax.random.split(key, len(groups))):
        out = fn(jnp.concatenate([_orient(x, *o) for o in group]), gkey)
        for i, o in enumerate(group):
            total = total + _unorient(out[i * n : (i + 1) * n], *o)
    return total / len(orients)
