"""The embedded demo dataset: a miniature SIDD made from scikit-image's sample photos.

It lets training and validation run end to end without downloading SIDD. Each source photo is
upscaled 3x, because a phone photo is smooth at the pixel scale (the network looks at it through
a 5x pixel-shuffle down-sampling), then noised by `camera_noise`. Most photos become SIDD Medium
style training scenes; the rest, never seen in training, become SIDD-style validation blocks.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import skimage.data
from tqdm import tqdm

from ambsn_jax.data.camera_noise import add_camera_noise, apply_camera_noise, sample_camera_params
from ambsn_jax.data.images import write_pixels
from ambsn_jax.data.sidd import save_blocks_mat
from ambsn_jax.errors import UserError
from ambsn_jax.files import atomic_dir

DEMO_VERSION = 2
MANIFEST = "manifest.json"

# Colour photos inside scikit-image's wheel (no download). `cat` is `chelsea` again, so it must
# not be added to training while chelsea validates.
_TRAIN_SOURCES = {
    "astronaut": skimage.data.astronaut,
    "rocket": skimage.data.rocket,
    "motorcycle_left": lambda: skimage.data.stereo_motorcycle()[0],
    "motorcycle_right": lambda: skimage.data.stereo_motorcycle()[1],
    "hubble_deep_field": skimage.data.hubble_deep_field,
    "retina": skimage.data.retina,
    "immunohistochemistry": skimage.data.immunohistochemistry,
}
_VALIDATION_SOURCES = {
    "chelsea": skimage.data.chelsea,
    "coffee": skimage.data.coffee,
}
_SEED = 20240501
_CROP = 256  # source pixels: 768 x 768 after upscaling, enough and quick to write
_UPSCALE = 3
_BLOCK = 64
_BLOCK_GRID = (2, 4)  # blocks per image: rows x columns, the centres of an even grid
_PHONES = ("S6", "IP", "GP", "N6", "G4")  # SIDD's five smartphones


def demo_root(cache_dir: str | Path | None = None) -> Path:
    """The demo dataset's folder, made on first use (a few seconds) and reused afterwards.

    `cache_dir` defaults to `$AMBSN_CACHE`, else `~/.cache/ambsn_jax`. The folder holds
    `SIDD_Medium_Srgb/Data/<scene>/...PNG`, `ValidationNoisyBlocksSrgb.mat`,
    `ValidationGtBlocksSrgb.mat` and `manifest.json`.
    """
    cache = Path(cache_dir if cache_dir is not None else _default_cache()).expanduser()
    root = cache / f"demo-v{DEMO_VERSION}"
    if (root / MANIFEST).is_file():
        return root
    if root.exists():
        raise UserError(
            f"{root}: exists but is not a complete demo dataset (no {MANIFEST}); delete it"
        )
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(
            f"{cache}: cannot make the demo dataset there ({e.strerror}); "
            "set AMBSN_CACHE to a writable folder"
        ) from e
    # Two processes making it at once both build the same bytes; the first rename wins.
    with atomic_dir(root) as tmp:
        _build(tmp)
    return root


def _default_cache() -> Path:
    return Path(os.environ.get("AMBSN_CACHE") or Path.home() / ".cache" / "ambsn_jax")


def _clean_image(load: Callable[[], np.ndarray]) -> np.ndarray:
    """The central crop of a source photo, upscaled into a smooth RGB uint8 'phone photo'."""
    photo = load()
    height, width = photo.shape[:2]
    top, left = max(height - _CROP, 0) // 2, max(width - _CROP, 0) // 2
    crop = photo[top : top + _CROP, left : left + _CROP]
    return cv2.resize(crop, None, fx=_UPSCALE, fy=_UPSCALE, interpolation=cv2.INTER_CUBIC)


def _blocks(image: np.ndarray) -> np.ndarray:
    """Blocks (n, 64, 64, 3) centred on an even grid over the image, row-major."""
    rows, cols = _BLOCK_GRID
    height, width = image.shape[:2]
    tops = ((np.arange(rows) + 0.5) * height / rows).astype(int) - _BLOCK // 2
    lefts = ((np.arange(cols) + 0.5) * width / cols).astype(int) - _BLOCK // 2
    return np.stack([image[t : t + _BLOCK, l : l + _BLOCK] for t in tops for l in lefts])


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    write_pixels(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def _photo_rng(index: int) -> np.random.Generator:
    # One generator per photo, so that a photo's noise does not depend on the photos before it.
    return np.random.default_rng((_SEED, index))


def _write_scene(data: Path, index: int, load: Callable[[], np.ndarray]) -> str:
    """Writes one SIDD Medium scene folder (ground truth and two noisy shots); returns its id."""
    rng = _photo_rng(index)
    clean = _clean_image(load)
    camera = sample_camera_params(rng)
    phone = _PHONES[index % len(_PHONES)]
    scene = f"{index + 1:04d}_{index + 1:03d}_{phone}_{camera.iso:05d}_00100_5500_N"
    _write_rgb(data / scene / f"{scene}_GT_SRGB_010.PNG", clean)
    # SIDD's _010 and _011 are two shots of the same scene with the same camera settings.
    for shot in ("010", "011"):
        noisy = apply_camera_noise(clean, camera, rng)
        _write_rgb(data / scene / f"{scene}_NOISY_SRGB_{shot}.PNG", noisy)
    return scene


def _build(out: Path) -> None:
    """Writes the whole dataset into `out`: the same pixels on every run."""
    total = len(_TRAIN_SOURCES) + len(_VALIDATION_SOURCES)
    with tqdm(total=total, desc="making the demo dataset", unit="photo", disable=None) as bar:
        train = {}
        for index, (name, load) in enumerate(_TRAIN_SOURCES.items()):
            train[_write_scene(out / "SIDD_Medium_Srgb" / "Data", index, load)] = name
            bar.update()
        noisy, clean = [], []
        for index, load in enumerate(_VALIDATION_SOURCES.values(), start=len(_TRAIN_SOURCES)):
            image = _clean_image(load)
            noisy.append(_blocks(add_camera_noise(image, _photo_rng(index))))
            clean.append(_blocks(image))
            bar.update()

    for var, blocks in [("ValidationNoisyBlocksSrgb", noisy), ("ValidationGtBlocksSrgb", clean)]:
        save_blocks_mat(out / f"{var}.mat", np.stack(blocks), var)
    manifest = {
        "generator": __name__,
        "version": DEMO_VERSION,
        "train": train,
        "validation": list(_VALIDATION_SOURCES),
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
