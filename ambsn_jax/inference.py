"""The release's inference (spec: `../shared/spec/AMBSN.md` §3) as jit-compiled functions.

`pd_forward` is the release's `forward(img, pd)`; `denoise` its `denoise(x)`: PD-2 / PD-5
fusion ("TTA"), then random-replacing refinement (R3). `Denoiser` compiles it once per input
shape; `denoise_image` tiles an image of any size so that memory stays bounded.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ambsn_jax.pd import pd_down, pd_up

Network = Callable[[jax.Array], jax.Array]


@dataclasses.dataclass(frozen=True)
class InferenceConfig:
    """Switches of the release's `denoise`; the defaults are the release's."""

    pd_a: int = 5  # training PD factor, also the second TTA pass
    pd_b: int = 2  # inference PD factor
    pd_pad: int = 2
    tta: bool = True  # fuse PD pd_b (weight 0.8) and PD pd_a (weight 0.2)
    r3: bool = True
    r3_t: int = 8
    r3_p: float = 0.16
    self_ensemble: bool = False  # average over the 8 rotations / flips
    bf16: bool = False  # convolutions in bfloat16 (GPU tensor cores); PD, fusion and R3 in float32


def default_inference(meta: Mapping[str, Any]) -> InferenceConfig:
    """The inference of the release of the architecture that checkpoint metadata `meta` records.

    AM-BSN fuses the PD-2 and PD-5 passes (TTA); AP-BSN and MM-BSN have no such fusion:
    PD 2, then R3.
    """
    return InferenceConfig(tta=meta.get("arch", "ambsn") == "ambsn")


def _crop(x: jax.Array, p: int) -> jax.Array:
    # x[:, p:-p] is empty for p = 0; the release guards the same case.
    return x[:, p : x.shape[1] - p, p : x.shape[2] - p]


def _pad_to_multiple(x: jax.Array, m: int) -> jax.Array:
    """Zero-pad at the bottom and right so that H and W divide by m."""
    h, w = x.shape[1:3]
    return jnp.pad(x, ((0, 0), (0, -h % m), (0, -w % m), (0, 0)))


def pd_forward(
    net: Network, x: jax.Array, pd: int, pad: int = 2, perm: jax.Array | None = None
) -> jax.Array:
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
    key: jax.Array | None = None,
    cfg: InferenceConfig = InferenceConfig(),
    masks: jax.Array | None = None,
) -> jax.Array:
    """Denoise a batch (N, H, W, C) in 0..255, as the release's `denoise` (no rounding).

    R3 draws its masks from `key`, or takes them explicitly through `masks` (shape
    `(cfg.r3_t, *x_r3.shape)` where x_r3 is x, padded to a multiple of pd_b when TTA is off).
    """
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
    # The T refinement passes run one after another: as one batch of T they were 1.2x slower
    # on a CPU and took 3x the memory (bench/NOTES.md; on GPUs not measured yet).
    out = jax.lax.map(lambda zt: _crop(net(zt), p), z)
    return jnp.mean(out, axis=0)[:, :h, :w]


def postprocess(y: jax.Array) -> jax.Array:
    """The release's rounding for metrics and saved images: +0.5, floor, clip to 0..255."""
    return jnp.clip(jnp.floor(y + 0.5), 0.0, 255.0)


def _orient(x: jax.Array, k: int, flip: bool) -> jax.Array:
    return jnp.rot90(x[:, :, ::-1] if flip else x, k, axes=(1, 2))


def _unorient(y: jax.Array, k: int, flip: bool) -> jax.Array:
    y = jnp.rot90(y, -k, axes=(1, 2))
    return y[:, :, ::-1] if flip else y


def self_ensemble(
    fn: Callable[[jax.Array, jax.Array], jax.Array], x: jax.Array, key: jax.Array
) -> jax.Array:
    """Mean of `fn(x', key)` over the 8 rotations / flips x' of x, each undone after.

    Orientations of equal shape run as one batch: two calls of `fn`, or one if H == W.
    """
    n, h, w = x.shape[:3]
    orients = [(k, flip) for flip in (False, True) for k in range(4)]
    groups = [orients] if h == w else [orients[0::2], orients[1::2]]
    total = jnp.zeros(x.shape, jnp.float32)
    for group, gkey in zip(groups, jax.random.split(key, len(groups))):
        out = fn(jnp.concatenate([_orient(x, *o) for o in group]), gkey)
        for i, o in enumerate(group):
            total = total + _unorient(out[i * n : (i + 1) * n], *o)
    return total / len(orients)


def _denoise_pure(
    graphdef: nnx.GraphDef, cfg: InferenceConfig, state: nnx.State, x: jax.Array, key: jax.Array
) -> jax.Array:
    net = nnx.merge(graphdef, state)
    run = partial(denoise, _in_bfloat16(net) if cfg.bf16 else net, cfg=cfg)
    if cfg.self_ensemble:
        return self_ensemble(run, x, key)
    return run(x, key)


def _in_bfloat16(net: nnx.Module) -> Network:
    """`net` with every convolution computing in bfloat16: inputs and weights rounded to it, as
    GPU tensor cores take them, and so are the activations between layers. Its output returns
    to float32, whose 0..255 scale bfloat16 would round to steps of up to 1."""
    for _, module in nnx.iter_modules(net):
        if isinstance(module, nnx.Conv):
            module.dtype = jnp.bfloat16
    return lambda z: net(z).astype(jnp.float32)


def fold_in_each(key: jax.Array, indices: Sequence[int] | np.ndarray) -> jax.Array:
    """One key per index i: `fold_in(key, i)`, so an item's draws depend on its index alone."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(indices, jnp.uint32))


class Denoiser:
    """A model and inference switches, compiled: `denoiser(x, keys)` -> unrounded output.

    Image i draws its randomness (R3's replacement masks) from keys[i] alone, so its result
    does not depend on which images share its batch, and scores do not change with the batch
    size. The parameters are an argument of the compiled function, not constants baked into
    it, so compiling stays fast at any width; jit caches one executable per input shape.
    """

    def __init__(self, model: nnx.Module, cfg: InferenceConfig = InferenceConfig()):
        self.cfg = cfg
        graphdef, self.state = nnx.split(model)
        pure = partial(_denoise_pure, graphdef, cfg)
        self._fn = jax.jit(jax.vmap(lambda s, x, k: pure(s, x[None], k)[0], in_axes=(None, 0, 0)))

    def __call__(self, x: jax.Array | np.ndarray, keys: jax.Array) -> jax.Array:
        """(N, H, W, 3) float in 0..255, keys (N,) -> the same shape; `postprocess` rounds it."""
        return self._fn(self.state, jnp.asarray(x, jnp.float32), keys)

    def compile(self, shape: tuple[int, ...]) -> None:
        """Compile for (N, H, W, 3) batches now rather than on the first call.

        Lets a caller time compilation apart from running; the jit cache keeps the result.
        """
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), shape[0]))
        self._fn.lower(self.state, jax.ShapeDtypeStruct(shape, jnp.float32), keys).compile()


def _tile_starts(size: int, tile: int, stride: int) -> list[int]:
    """Tile origins covering [0, size): regular steps, the last one aligned to the border."""
    if size <= tile:
        return [0]
    starts = list(range(0, size - tile, stride))
    return starts + [size - tile]


def _blend_window(tile: int, overlap: int) -> np.ndarray:
    """1-D weights rising linearly across the overlap, so neighbouring tiles cross-fade."""
    ramp = np.minimum(np.arange(1, tile + 1), np.arange(tile, 0, -1)).astype(np.float32)
    return np.minimum(ramp / max(overlap, 1), 1.0)


def denoise_image(
    denoiser: Denoiser,
    image: np.ndarray,
    key: jax.Array,
    tile: int = 512,
    overlap: int = 64,
    batch: int = 4,
) -> np.ndarray:
    """Denoise one (H, W, 3) image of any size; returns float32 (H, W, 3), unrounded.

    Images up to `tile` on both sides go through in one piece, as the release does. Larger
    ones are cut into `tile` x `tile` tiles overlapping by `overlap` and cross-faded, so
    memory is bounded, every tile shares one compiled shape, and no seam shows. Sides
    shorter than the R3 reflection needs are edge-padded first and cropped after.
    """
    h, w = image.shape[:2]
    min_side = denoiser.cfg.pd_pad + 1
    if h < min_side or w < min_side:
        padded = np.pad(image, ((0, max(0, min_side - h)), (0, max(0, min_side - w)), (0, 0)), "edge")
        return denoise_image(denoiser, padded, key, tile, overlap, batch)[:h, :w]
    if h <= tile and w <= tile:
        return np.asarray(denoiser(image[None], key[None])[0])
    th, tw = min(tile, h), min(tile, w)
    origins = [(y, x) for y in _tile_starts(h, th, th - overlap) for x in _tile_starts(w, tw, tw - overlap)]
    weight = np.outer(_blend_window(th, overlap), _blend_window(tw, overlap))[..., None]
    acc = np.zeros((h, w, image.shape[2]), np.float32)
    norm = np.zeros((h, w, 1), np.float32)
    for i in range(0, len(origins), batch):
        group = origins[i : i + batch]
        tiles = np.stack([image[y : y + th, x : x + tw] for y, x in group])
        # Pad the last group to a full batch so that every call has one compiled shape.
        tiles = np.concatenate([tiles, np.repeat(tiles[-1:], batch - len(group), axis=0)])
        # The copies that top up the batch draw with the last tile's key.
        out = np.asarray(denoiser(tiles, fold_in_each(key, np.minimum(np.arange(i, i + batch), len(origins) - 1))))
        for (y, x), o in zip(group, out):
            acc[y : y + th, x : x + tw] += o * weight
            norm[y : y + th, x : x + tw] += weight
    return acc / norm
