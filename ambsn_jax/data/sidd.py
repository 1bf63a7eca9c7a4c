"""SIDD file formats: block .mat files (MATLAB v5 and v7.3), SIDD Medium folders, patch cutting."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io
from tqdm import tqdm

from ambsn_jax.data import check
from ambsn_jax.data.images import list_images, write_pixels
from ambsn_jax.errors import UserError
from ambsn_jax.ops.windows import window_starts

_NUMERIC_MATLAB_CLASSES = frozenset(
    "double single int8 uint8 int16 uint16 int32 uint32 int64 uint64 logical".split()
)
_V5_READ_ERRORS = (ValueError, OSError, scipy.io.matlab.MatReadError)
_NOISY_MARK = "_NOISY_SRGB_"


def load_blocks(path: str | Path) -> np.ndarray:
    """SIDD blocks as uint8 (images, blocks, height, width, 3) RGB, from a v5 or v7.3 .mat file.

    The array is the variable named like the file's stem, or the file's only numeric array.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file")
    # v7.3 files are HDF5 files with a MATLAB header in the user block; scipy reads only v4/v5.
    load = _load_v73 if h5py.is_hdf5(path) else _load_v5
    return np.ascontiguousarray(load(path))


def _pick_variable(path: Path, arrays: dict[str, tuple[tuple[int, ...], str]]) -> str:
    """The name of the blocks variable among numeric arrays {name: (shape, dtype name)}."""
    if path.stem in arrays:
        name = path.stem
    elif len(arrays) == 1:
        (name,) = arrays
    else:
        found = ", ".join(sorted(arrays)) or "no numeric arrays"
        raise UserError(
            f"{path}: no variable '{path.stem}' (found: {found}); pass the SIDD file itself"
        )
    shape, dtype = arrays[name]
    if len(shape) != 5 or shape[-1] != 3:
        raise UserError(
            f"{path}: variable '{name}' has shape {tuple(shape)}, not (images, blocks, height, "
            "width, 3); pass SIDD RGB blocks"
        )
    if dtype != "uint8":
        raise UserError(
            f"{path}: variable '{name}' holds {dtype}, not uint8; save the blocks as uint8 0..255"
        )
    return name


def _load_v5(path: Path) -> np.ndarray:
    try:
        listing = scipy.io.whosmat(path)
        arrays = {
            name: (shape, cls) for name, shape, cls in listing if cls in _NUMERIC_MATLAB_CLASSES
        }
        name = _pick_variable(path, arrays)
        return scipy.io.loadmat(path, variable_names=[name])[name]
    except _V5_READ_ERRORS as e:
        raise UserError(
            f"{path}: not a readable MATLAB .mat file ({e}); pass the SIDD .mat file"
        ) from e


def _load_v73(path: Path) -> np.ndarray:
    try:
        with h5py.File(path, "r") as f:
            # MATLAB keeps internals in '#refs#' / '#subsystem#'; structs and cells are not arrays.
            datasets = {
                n: d for n, d in f.items()
                if isinstance(d, h5py.Dataset) and not n.startswith("#") and d.dtype.kind in "biuf"
            }
            # HDF5 holds MATLAB's column-major arrays with their axes reversed.
            arrays = {n: (d.shape[::-1], d.dtype.name) for n, d in datasets.items()}
            name = _pick_variable(path, arrays)
            return datasets[name][()].transpose()
    except OSError as e:
        raise UserError(
            f"{path}: not a readable MATLAB v7.3 file ({e}); pass the SIDD .mat file"
        ) from e


def save_blocks_mat(path: str | Path, blocks: np.ndarray, var: str) -> None:
    """Writes `blocks` as variable `var` of a MATLAB v5 .mat file (the format SIDD ships)."""
    scipy.io.savemat(Path(path), {var: blocks}, appendmat=False)


def save_blocks_mat73(path: str | Path, blocks: np.ndarray, var: str) -> None:
    """Writes `blocks` as variable `var` of a MATLAB v7.3 (HDF5) .mat file, as MATLAB would."""
    path = Path(path)
    with h5py.File(path, "w", userblock_size=512) as f:
        dataset = f.create_dataset(var, data=blocks.transpose(), track_times=False)
        dataset.attrs["MATLAB_class"] = np.bytes_(blocks.dtype.name)
    # MATLAB recognises its files by the 128-byte header: text, subsystem offset, version 0x0200
    # and the 'IM' endianness mark; scipy uses it to say "this is v7.3".
    text = b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created by: ambsn_jax HDF5 schema 1.00 ."
    header = text.ljust(116, b" ") + bytes(8) + b"\x00\x02IM"
    with open(path, "r+b") as f:
        f.write(header)


def find_noisy_images(root: str | Path) -> list[Path]:
    """Training images under `root`: SIDD Medium's noisy images if it is one, else all images."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(
            f"{root}: not an existing folder; pass the folder of training images "
            "(e.g. SIDD_Medium_Srgb)"
        )
    images = list_images(root, recursive=True)
    # SIDD Medium holds ground truth beside every noisy image; self-supervised training must
    # never see it.
    noisy = [p for p in images if _NOISY_MARK in p.name.upper()]
    return noisy or images


def prepare_patches(
    src_root: str | Path, out_root: str | Path, size: int, stride: int, crop: int = 1, skip_bad: bool = False
) -> list[Path]:
    """Cuts every training image under `src_root` into size x size PNG patches under `out_root`.

    Patches mirror the source folders and are named `<stem>_y<row>_x<col>.png`. Images smaller
    than `size` stay whole along that side. Patches already present are kept, so an interrupted
    run resumes (each patch file is written atomically). Returns all patch paths.

    Every source is checked as it is read (`ambsn_jax.data.check`: decodes in full, RGB, 8 or
    16 bit, at least `crop` pixels a side): the bad ones are all listed in one UserError once
    the good ones are cut (kept for the rerun), or skipped with a warning if `skip_bad`.
    """
    src_root, out_root = Path(src_root), Path(out_root)
    if not 0 < stride <= size:
        raise UserError(f"stride {stride}: must be in 1..{size} (the size), or patches leave gaps")
    if out_root.resolve().is_relative_to(src_root.resolve()):
        raise UserError(
            f"{out_root}: lies inside {src_root}, so patches would become training sources; "
            "pick an output folder outside it"
        )
    sources = find_noisy_images(src_root)
    bad = {}
    patches = []
    for source in tqdm(sources, desc="cutting patches", unit="image", disable=None):
        rel = source.relative_to(src_root)
        pixels, reason = check.inspect(source, crop)
        if pixels is None:
            bad[source] = reason
            continue
        height, width = pixels.shape[:2]
        for y in window_starts(height, size, stride):
            for x in window_starts(width, size, stride):
                patch = out_root / rel.parent / f"{rel.stem}_y{y:04d}_x{x:04d}.png"
                if not patch.exists():
                    write_pixels(patch, pixels[y : y + size, x : x + size])
                patches.append(patch)
    check.report(bad, len(sources), skip_bad)
    return patches
