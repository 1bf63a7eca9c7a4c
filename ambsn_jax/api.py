"""The library entry points: `denoise` one image, or `load` a checkpoint once for many.

With the same checkpoint, switches and seed, they give the pixels that
`evaluate.py --input IMAGE --output DIR` writes for that image.
"""

from __future__ import annotations

import dataclasses
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from ambsn_jax.checkpoint import store
from ambsn_jax.checkpoint.store import Checkpoint, load_checkpoint
from ambsn_jax.data.images import ImageInfo, from_network, to_network
from ambsn_jax.errors import UserError
from ambsn_jax.inference.keys import item_keys
from ambsn_jax.inference.denoiser import BatchDenoiser, BoundDenoiser
from ambsn_jax.inference.release import InferenceConfig, default_inference
from ambsn_jax.inference.tiling import denoise_images
from ambsn_jax.ops.windows import Tiling


@dataclasses.dataclass(frozen=True)
class ImageDenoiser:
    """A checkpoint's network with the release's inference, compiled once per image shape.

    `denoiser(image)` takes a gray (H, W) or colour (H, W, 3|4) array of uint8, uint16 or
    float and returns the denoised array of the same shape and dtype (alpha unchanged).
    Floats are read as 0..1, or 0..255 with `float_max=255`; integers keep their full range.
    """

    checkpoint: Checkpoint
    cfg: InferenceConfig
    tiling: Tiling
    _denoiser: BoundDenoiser = dataclasses.field(repr=False)  # bound once: a call pays no re-placing

    def __call__(self, image: np.ndarray, seed: int = 0, index: int = 0, float_max: float = 1.0) -> np.ndarray:
        """`image` denoised. Its R3 randomness comes from `seed` and `index` alone: the command
        line draws image i of a folder (sorted by name) from index i, and a single file from 0."""
        return self.batch([image], [seed], [index], float_max)[0]

    def batch(
        self, images: Sequence[np.ndarray], seeds: Sequence[int], indices: Sequence[int], float_max: float = 1.0
    ) -> list[np.ndarray]:
        """Images of one shape and dtype, image i denoised as `self(images[i], seeds[i],
        indices[i])` returns it. Those up to a tile go through the network in one call, its
        items spread over the devices: what a server does with concurrent requests."""
        arrays = [np.asarray(image) for image in images]
        if len({(a.shape, a.dtype) for a in arrays}) != 1 or not len(arrays) == len(seeds) == len(indices):
            raise ValueError("batch takes one or more images of one shape and dtype, and a seed and index for each")
        samples = [_as_samples(a, float_max) for a in arrays]
        network = [to_network(s, "the array") for s, _ in samples]
        keys = jnp.concatenate([item_keys(seed, [index]) for seed, index in zip(seeds, indices)])
        outs = denoise_images(self._denoiser, np.stack([rgb for rgb, _ in network]), keys, self.tiling)
        return [_restore(o, a, info, scale) for o, a, (_, info), (_, scale) in zip(outs, arrays, network, samples)]

    @property
    def devices(self) -> int:
        """How many devices a call spreads its images (or tiles) over."""
        return self._denoiser.devices

    def compile_tiles(self) -> None:
        """Compiles now, rather than on first use, the program of full tiles (`tiling.batch` of
        `tiling.tile` square per device), for a server's warm-up. Large images whose even tile
        grid (`even_windows`) comes out smaller compile theirs on first use: one per 16 pixels
        of tile side, kept on disk by the compilation cache."""
        devices = self._denoiser.batch_denoiser.local_devices()
        self._denoiser.compile((self.tiling.batch * devices, self.tiling.tile, self.tiling.tile, 3))


def _restore(out: np.ndarray, image: np.ndarray, info: ImageInfo, scale: float | None) -> np.ndarray:
    """The network's output for `image` in `image`'s own form (shape, dtype, alpha)."""
    if scale is None:
        return from_network(out, info)
    # Floats keep the network's unrounded output, on their own scale.
    values = np.clip(out, 0.0, 255.0) * np.float32(scale / 255.0)
    values = values.mean(axis=2) if info.mode == "gray" else values
    if info.mode == "rgba":
        values = np.dstack([values, image[:, :, 3]])
    return values.reshape(image.shape).astype(image.dtype)


def _as_samples(image: np.ndarray, float_max: float) -> tuple[np.ndarray, float | None]:
    """Integer samples as they are; floats, checked to lie in 0..float_max, as 16-bit samples
    (the finest depth the network's input takes) plus the scale to return them to."""
    if image.dtype in (np.uint8, np.uint16):
        return image, None
    if not np.issubdtype(image.dtype, np.floating):
        raise UserError(f"the array is {image.dtype}; pass uint8, uint16 or float (0..1, or 0..255 with float_max=255)")
    if float_max not in (1.0, 255.0):
        raise UserError(f"float_max={float_max}: must be 1 (floats in 0..1) or 255 (floats in 0..255)")
    finite = bool(np.isfinite(image).all())
    # nanmin / nanmax warn on an all-NaN array; the message below says what is wrong instead.
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        low, high = (float(np.nanmin(image)), float(np.nanmax(image))) if image.size else (0.0, 0.0)
    if not (finite and low >= 0.0 and high <= float_max):
        hint = " (values above 1: pass float_max=255 for 0..255 floats)" if float_max == 1.0 and high <= 255 else ""
        raise UserError(f"the float array spans {low:g}..{high:g}, not 0..{float_max:g}{hint}")
    return np.round(image.astype(np.float64) * (65535.0 / float_max)).astype(np.uint16), float_max


def load(
    ckpt: str | Path | None = None,
    *,
    tta: bool = True,
    r3: bool = True,
    self_ensemble: int | bool | None = None,
    precision: str | None = None,
    tiling: Tiling = Tiling(),
) -> ImageDenoiser:
    """A reusable denoiser for many images. `ckpt`: an Orbax directory, a training workdir or a
    release `.pth`; None: the shipped default weights (`store.DEFAULT_WEIGHTS`: a small network
    trained on the demo's synthetic noise, for trying things out). The switches are `evaluate.py`'s (`--no-tta`, ...);
    `self_ensemble` (1, 2, 4 or 8 orientations; True: 8) and `precision` (highest, tf32, bf16)
    default to the checkpoint metadata's and the platform's."""
    checkpoint = load_checkpoint(store.DEFAULT_WEIGHTS if ckpt is None else ckpt)
    given = {"precision": precision, "self_ensemble": self_ensemble}
    switches = {k: v for k, v in given.items() if v is not None}
    cfg = default_inference(checkpoint.meta, tta=tta, r3=r3, **switches)
    denoiser = BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, cfg).bind(checkpoint.params)
    return ImageDenoiser(checkpoint, cfg, tiling, denoiser)


def denoise(image: np.ndarray, ckpt: str | Path | None = None, *, seed: int = 0, float_max: float = 1.0, **switches: Any) -> np.ndarray:
    """`image` (see `ImageDenoiser`) denoised by checkpoint `ckpt` (see `load`, which takes the
    `switches`); for many images, `load` once and call the result."""
    return load(ckpt, **switches)(image, seed=seed, float_max=float_max)
