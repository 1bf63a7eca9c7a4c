"""The DND sRGB benchmark (Ploetz & Roth, CVPR 2017), in the layout of its submission kit.

Input, the kit's data folder:
- `info.mat` (MATLAB v7.3, HDF5): `info.boundingboxes`, a cell with one (boxes, 4) array per
  image; a row is [r1 c1 r2 c2], 1-based and inclusive (the kit crops `[r1-1:r2, c1-1:c2]`).
- `images_srgb/NNNN.mat` (v7.3), NNNN from 0001: `InoisySRGB`, float (H, W, 3) in 0..1.

Output, as the kit's `denoise_srgb` and `bundle_submissions_srgb` write it:
- `OUT/NNNN_BB.mat`: `Idenoised_crop`, float32 (h, w, 3) in 0..1, one file per box;
- `OUT/bundled/NNNN.mat`: `Idenoised` (cell of the image's crops), `israw` false,
  `eval_version` '1.0'. The `bundled` folder is what gets uploaded.

Assumptions: the counts of images and boxes come from `info.mat` (50 x 20 in the real set)
rather than being fixed; the kit's noise estimates (`nlf`, `sigma_srgb`) are not used. Crops
are denoised on the 0..255 scale and rounded like every other output (`postprocess`), then
divided by 255.
"""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np
import scipy.io
from tqdm import tqdm

from ambsn_jax import mesh as meshlib
from ambsn_jax.errors import UserError
from ambsn_jax.inference.keys import item_keys
from ambsn_jax.evaluation.resume import Resume, fingerprint
from ambsn_jax.files import atomic_path
from ambsn_jax.inference.denoiser import BoundDenoiser
from ambsn_jax.inference.release import postprocess
from ambsn_jax.inference.tiling import Tiling, denoise_image

_H5_ERRORS = (OSError, KeyError, ValueError, TypeError)


def read_boxes(root: str | Path) -> list[np.ndarray]:
    """Per image, its boxes as int (boxes, 4) rows [r1, c1, r2, c2], 1-based and inclusive."""
    path = Path(root) / "info.mat"
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the DND folder that holds info.mat and images_srgb/")
    try:
        with h5py.File(path, "r") as f:
            info = f["info"]
            # MATLAB stores the cell as object references and every array transposed.
            boxes = [np.asarray(info[ref]).T for ref in info["boundingboxes"][()].reshape(-1)]
    except _H5_ERRORS as e:
        raise UserError(f"{path}: not DND's info.mat ({e}); pass the DND sRGB folder") from e
    for i, b in enumerate(boxes):
        if b.ndim != 2 or b.shape[1] != 4:
            raise UserError(f"{path}: boxes of image {i + 1} have shape {b.shape}, not (boxes, 4)")
    return [b.astype(np.int64) for b in boxes]


def read_noisy(root: str | Path, image: int) -> np.ndarray:
    """Noisy image `image` (1-based, as in the file names): float32 (H, W, 3) in 0..1."""
    path = Path(root) / "images_srgb" / f"{image:04d}.mat"
    if not path.is_file():
        raise UserError(f"{path}: no such file; info.mat lists image {image}")
    try:
        with h5py.File(path, "r") as f:
            noisy = np.asarray(f["InoisySRGB"], np.float32).T
    except _H5_ERRORS as e:
        raise UserError(f"{path}: no readable InoisySRGB array ({e}); pass the DND sRGB images") from e
    if noisy.ndim != 3 or noisy.shape[2] != 3:
        raise UserError(f"{path}: InoisySRGB has shape {noisy.shape}, not (H, W, 3)")
    return noisy


def _crop(noisy: np.ndarray, box: np.ndarray, where: str) -> np.ndarray:
    r1, c1, r2, c2 = (int(v) for v in box)
    h, w = noisy.shape[:2]
    if not (1 <= r1 <= r2 <= h and 1 <= c1 <= c2 <= w):
        raise UserError(f"{where}: box {[r1, c1, r2, c2]} lies outside the {h}x{w} image")
    return noisy[r1 - 1 : r2, c1 - 1 : c2]


def _save_mat(path: Path, variables: dict) -> None:
    with atomic_path(path) as tmp:
        scipy.io.savemat(tmp, variables, appendmat=False)


def denoise_dnd(
    denoiser: BoundDenoiser,
    root: str | Path,
    all_boxes: list[np.ndarray],
    out_dir: str | Path,
    seed: int,
    tiling: Tiling,
    resume: Resume | None = None,
) -> None:
    """Writes the results of this process's share of the images (every image when it runs
    alone): each box's file and the image's bundled file; `all_boxes` as `read_boxes` gives them.

    Box n, counted over all images in order, draws its R3 randomness from `item_keys(seed, [n])`.
    With `resume`, box files an earlier run finished are read back instead of recomputed (an
    image none of whose boxes is left is not even read).
    """
    root, out_dir = Path(root), Path(out_dir)
    first_box = np.cumsum([0, *map(len, all_boxes)])
    mine = meshlib.my_share(len(all_boxes))
    with tqdm(total=sum(len(all_boxes[i]) for i in mine), desc="DND", unit="box", disable=None) as bar:
        for i in mine:
            image, boxes = i + 1, all_boxes[i]
            noisy = None  # read only if a box of this image is still to do
            crops = np.empty(len(boxes), dtype=object)  # saved as a MATLAB cell, as the kit does
            source = root / "images_srgb" / f"{image:04d}.mat"
            for k, box in enumerate(boxes):
                name = f"{image:04d}_{k + 1:02d}.mat"
                n = int(first_box[i] + k)
                item = fingerprint(n, source, box=[int(v) for v in box])
                if resume is not None and resume.finished(name, item):
                    crops[k] = scipy.io.loadmat(out_dir / name)["Idenoised_crop"]
                    bar.update()
                    continue
                noisy = read_noisy(root, image) if noisy is None else noisy
                crop = _crop(noisy, box, f"{root / 'info.mat'} (image {image}, box {k + 1})")
                out = denoise_image(denoiser, crop * 255.0, item_keys(seed, [n])[0], tiling)
                crops[k] = (np.asarray(postprocess(out)) / 255.0).astype(np.float32)
                _save_mat(out_dir / name, {"Idenoised_crop": crops[k]})
                if resume is not None:
                    resume.record(name, item)
                bar.update()
            _save_mat(
                out_dir / "bundled" / f"{image:04d}.mat",
                {"Idenoised": crops, "israw": False, "eval_version": "1.0"},
            )
