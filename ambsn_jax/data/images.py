"""Image files: reading them for the network and writing results back in the input's form."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import cv2
import numpy as np

from ambsn_jax.errors import UserError
from ambsn_jax.files import atomic_path

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# 65535 / 257 == 255: maps 16-bit samples exactly onto the network's 0..255 scale.
_SCALE = {8: 1.0, 16: 257.0}
_DTYPE = {8: np.uint8, 16: np.uint16}


@dataclass(frozen=True, eq=False)
class ImageInfo:
    """What `write_image` needs to give a result the bit depth and channels of its input."""

    depth: Literal[8, 16]
    mode: Literal["gray", "rgb", "rgba"]
    alpha: np.ndarray | None  # (H, W) in the file's own depth, for "rgba" only


def list_images(path: str | Path, recursive: bool = False) -> list[Path]:
    """The image files named by `path`: the file itself, or those in the folder, sorted."""
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise UserError(f"{path}: no such file or folder; pass an image or a folder of images")
    candidates = path.rglob("*") if recursive else path.iterdir()
    # Names starting with a dot are metadata (macOS `._x.png` forks in zips), not images.
    images = sorted(
        p
        for p in candidates
        if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
    )
    if not images:
        where = "under" if recursive else "in"
        raise UserError(
            f"{path}: no image files {where} it (looked for {', '.join(IMAGE_EXTENSIONS)}, "
            "any case); pass a folder that holds images"
        )
    return images


def _file_bytes(path: Path) -> np.ndarray:
    try:
        # Decoding the bytes rather than cv2.imread: imread cannot open non-ASCII paths everywhere.
        return np.fromfile(path, dtype=np.uint8)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror}); pass a readable image file") from e


def _decode(path: Path, data: np.ndarray, flags: int) -> np.ndarray:
    pixels = cv2.imdecode(data, flags) if data.size else None
    if pixels is None:
        raise UserError(
            f"{path}: not a readable image; pass a {'/'.join(IMAGE_EXTENSIONS)} image file"
        )
    return pixels


def read_pixels(path: str | Path) -> np.ndarray:
    """The file's samples as stored: uint8 or uint16, OpenCV channel order (BGR / BGRA)."""
    path = Path(path)
    return _decode(path, _file_bytes(path), cv2.IMREAD_UNCHANGED)


def write_pixels(path: str | Path, pixels: np.ndarray) -> None:
    """Writes samples in OpenCV channel order; the file appears complete or not at all."""
    path = Path(path)
    try:
        ok, encoded = cv2.imencode(path.suffix, pixels)
    except cv2.error:
        ok = False
    if not ok:
        channels = 1 if pixels.ndim == 2 else pixels.shape[2]
        raise UserError(
            f"{path}: cannot write a {pixels.dtype} image with {channels} channel(s) "
            f"as '{path.suffix}'; use .png or .tif"
        )
    with atomic_path(path) as tmp, open(tmp, "xb") as f:
        f.write(encoded.tobytes())


def to_network(samples: np.ndarray, where: str) -> tuple[np.ndarray, ImageInfo]:
    """RGB-ordered samples, uint8 or uint16, gray (H, W[, 1]), RGB or RGBA (H, W, 3|4) -> the
    network's RGB float32 (H, W, 3) in 0..255, and what `from_network` needs to undo it.

    Gray is repeated over the three channels; alpha is set aside and put back unchanged.
    `where` (a file, or "the array") names the input in errors.
    """
    depth = {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(samples.dtype)
    if depth is None:
        raise UserError(f"{where}: {samples.dtype} samples are not supported; convert it to 8 or 16 bit")
    if samples.ndim == 3 and samples.shape[2] == 1:
        samples = samples[:, :, 0]
    alpha = None
    if samples.ndim == 2:
        mode = "gray"
        rgb = np.repeat(samples[:, :, None], 3, axis=2)
    elif samples.ndim == 3 and samples.shape[2] in (3, 4):
        mode = "rgb" if samples.shape[2] == 3 else "rgba"
        rgb = samples[:, :, :3]
        alpha = samples[:, :, 3].copy() if mode == "rgba" else None
    else:
        raise UserError(f"{where}: shape {samples.shape} is not a gray (H, W) or colour (H, W, 3|4) image")
    image = rgb.astype(np.float32) / np.float32(_SCALE[depth])
    return image, ImageInfo(depth=depth, mode=mode, alpha=alpha)


def from_network(rgb_0_255: np.ndarray, info: ImageInfo) -> np.ndarray:
    """The network's RGB float (H, W, 3) in 0..255 -> RGB-ordered samples of the depth and
    channels `info` recorded, rounded as the release rounds (+0.5, floor, clip)."""
    if rgb_0_255.ndim != 3 or rgb_0_255.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) image, got shape {rgb_0_255.shape}")
    values = rgb_0_255.mean(axis=2) if info.mode == "gray" else rgb_0_255
    dtype = _DTYPE[info.depth]
    samples = np.floor(values * _SCALE[info.depth] + 0.5)
    samples = np.clip(samples, 0, np.iinfo(dtype).max).astype(dtype)
    if info.mode != "rgba":
        return samples
    if info.alpha is None or info.alpha.shape != samples.shape[:2]:
        raise ValueError("an rgba ImageInfo needs the (H, W) alpha of an image of this size")
    return np.dstack([samples, info.alpha])


def _swap_red_blue(samples: np.ndarray) -> np.ndarray:
    """OpenCV's BGR(A) order <-> RGB(A): its files speak the one, the network the other."""
    if samples.ndim == 3 and samples.shape[2] in (3, 4):
        return np.ascontiguousarray(samples[:, :, [2, 1, 0, *range(3, samples.shape[2])]])
    return samples


def decode_samples(data: np.ndarray | bytes, where: str | Path) -> np.ndarray:
    """An encoded image file's bytes -> its samples as stored (uint8 or uint16), RGB-ordered.

    `where` (a file, or a request) names the input in errors.
    """
    data = np.frombuffer(data, np.uint8) if isinstance(data, bytes) else data
    # Phone JPEGs are often stored sideways with an EXIF orientation tag, which the written result
    # will not carry: decode them upright (these flags apply the tag; JPEGs have no alpha to lose).
    is_jpeg = data[:3].tobytes() == b"\xff\xd8\xff"
    flags = cv2.IMREAD_ANYDEPTH | cv2.IMREAD_ANYCOLOR if is_jpeg else cv2.IMREAD_UNCHANGED
    return _swap_red_blue(_decode(Path(where), data, flags))


def encode_png(samples: np.ndarray) -> bytes:
    """RGB-ordered uint8 / uint16 samples (gray, RGB or RGBA) as the bytes of a PNG file."""
    ok, encoded = cv2.imencode(".png", _swap_red_blue(samples))
    if not ok:
        raise ValueError(f"cannot encode a {samples.dtype} array of shape {samples.shape} as PNG")
    return encoded.tobytes()


def read_image(path: str | Path) -> tuple[np.ndarray, ImageInfo]:
    """An image as RGB float32 (H, W, 3) in 0..255, and what it takes to write it back alike."""
    path = Path(path)
    return to_network(decode_samples(_file_bytes(path), path), str(path))


def write_image(path: str | Path, rgb_0_255: np.ndarray, info: ImageInfo) -> None:
    """Writes an RGB float image in 0..255 with the depth and channels `info` recorded."""
    write_pixels(path, _swap_red_blue(from_network(rgb_0_255, info)))
