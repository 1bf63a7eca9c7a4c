"""Denoising image files (ambsn_jax.evaluation.folder): each input's size, depth and channels kept."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import cv2
import numpy as np
import pytest

from ambsn_jax.data.images import read_image
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation import folder
from ambsn_jax.inference.keys import item_keys
from ambsn_jax.inference.release import postprocess
from ambsn_jax.inference.tiling import denoise_image
from ambsn_jax.ops.windows import Tiling
from tests.helpers import RELEASE, bound, evaluate

FAST = ["--no-tta", "--no-r3"]


def _write(path: Path, pixels: np.ndarray) -> None:
    assert cv2.imwrite(str(path), pixels)


def test_folder_keeps_size_depth_channels_and_reports_unreadable_files(model, ckpt, capsys, tmp_path):
    rng = np.random.default_rng(0)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    inputs = {
        "odd.png": rng.integers(0, 256, (17, 23, 3), dtype=np.uint8),  # tiled below: 16-pixel tiles
        "deep.tif": rng.integers(0, 65536, (20, 18, 3), dtype=np.uint16),
        "gray.png": rng.integers(0, 256, (16, 19), dtype=np.uint8),
        "rgba.png": rng.integers(0, 256, (24, 16, 4), dtype=np.uint8),
        "small.bmp": rng.integers(0, 256, (9, 11, 3), dtype=np.uint8),  # below one tile: whole
    }
    for name, pixels in inputs.items():
        _write(src / name, pixels)
    (src / "broken.png").write_bytes(b"not an image")

    argv = ["--ckpt", ckpt, "--input", src, "--output", dst, "--no-r3", "--tile", 16, "--overlap", 4, "--batch", 3]
    code, out, err = evaluate(argv, capsys)
    assert code == 1
    lines = err.strip().splitlines()
    assert lines[0] == f"weights: {ckpt}, step 0 (AM-BSN, C=8)"
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1 and errors[0].startswith(f"error: {src / 'broken.png'}: not a readable image")
    assert all(line.startswith(("weights: ", "error: ", "[")) for line in lines)
    assert "wrote 5 of 6 images" in out
    for name, pixels in inputs.items():
        written = cv2.imread(str(dst / f"{Path(name).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert written.shape == pixels.shape and written.dtype == pixels.dtype, name
    np.testing.assert_array_equal(cv2.imread(str(dst / "rgba.png"), cv2.IMREAD_UNCHANGED)[..., 3], inputs["rgba.png"][..., 3])
    # Besides the images, only the resume manifest (a dot file).
    assert sorted(p.name for p in dst.iterdir() if not p.name.startswith(".")) == ["deep.png", "gray.png", "odd.png", "rgba.png", "small.png"]

    # The content: the tiled inference, in RGB order, rounded as the release rounds. "odd.png"
    # is image 3 of the sorted folder, so it draws from item key 3.
    image, _ = read_image(src / "odd.png")
    denoiser = bound(model, dataclasses.replace(RELEASE, r3=False))
    want = postprocess(denoise_image(denoiser, image, item_keys(0, [3])[0], Tiling(16, 4, 3)))
    got = cv2.cvtColor(cv2.imread(str(dst / "odd.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, np.asarray(want))


def test_single_image_input(ckpt, model, capsys, tmp_path):
    pixels = np.random.default_rng(1).integers(60, 120, (12, 10, 3), dtype=np.uint8)
    _write(tmp_path / "a.png", pixels)
    code, out, err = evaluate(["--ckpt", ckpt, "--input", tmp_path / "a.png", "--output", tmp_path / "o", *FAST], capsys)
    assert code == 0 and err.splitlines()[0] == f"weights: {ckpt}, step 0 (AM-BSN, C=8)" and "error" not in err
    assert out == f"wrote 1 of 1 images to {tmp_path / 'o'} (0 reused from an earlier run; --overwrite redoes them)\n"
    image, _ = read_image(tmp_path / "a.png")
    denoiser = bound(model, dataclasses.replace(RELEASE, tta=False, r3=False))
    want = np.asarray(postprocess(denoise_image(denoiser, image, item_keys(0, [0])[0])))
    got = cv2.cvtColor(cv2.imread(str(tmp_path / "o" / "a.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, want)


def test_output_paths_refuse_clashes(tmp_path):
    a, b = tmp_path / "in" / "a.png", tmp_path / "in" / "a.jpg"
    assert folder.output_paths([a], tmp_path / "out") == {a: tmp_path / "out" / "a.png"}
    with pytest.raises(UserError, match="would both be written to"):
        folder.output_paths([a, b], tmp_path / "out")
    a.parent.mkdir()
    a.write_bytes(b"")
    with pytest.raises(UserError, match="would overwrite an input image"):
        folder.output_paths([a], tmp_path / "in")
