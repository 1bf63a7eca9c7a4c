"""SIDD files (ambsn_jax.data.sidd): .mat blocks in both MATLAB formats, SIDD Medium folders, patches."""

from __future__ import annotations

import re
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io

from ambsn_jax.data import sidd
from ambsn_jax.data.sidd import (
    find_noisy_images,
    load_blocks,
    prepare_patches,
    save_blocks_mat,
    save_blocks_mat73,
)
from ambsn_jax.errors import UserError
from tests.helpers import write_png


@pytest.fixture
def blocks() -> np.ndarray:
    # Every axis a different length, so that a transposition cannot go unnoticed.
    return np.random.default_rng(0).integers(0, 256, (2, 3, 8, 6, 3), dtype=np.uint8)


@pytest.mark.parametrize("save", [save_blocks_mat, save_blocks_mat73])
def test_mat_round_trip(tmp_path, blocks, save):
    path = tmp_path / "ValidationNoisyBlocksSrgb.mat"
    save(path, blocks, "ValidationNoisyBlocksSrgb")
    loaded = load_blocks(path)
    assert loaded.dtype == np.uint8 and loaded.flags.c_contiguous
    np.testing.assert_array_equal(loaded, blocks)


def test_mat73_is_recognised_as_matlab_v73(tmp_path, blocks):
    path = tmp_path / "b.mat"
    save_blocks_mat73(path, blocks, "b")
    assert scipy.io.matlab.matfile_version(path) == (2, 0)
    with h5py.File(path, "r") as f:
        assert f["b"].shape == blocks.shape[::-1]
        assert f["b"].attrs["MATLAB_class"] == b"uint8"


@pytest.mark.parametrize("save", [save_blocks_mat, save_blocks_mat73])
def test_mat_single_array_under_another_name(tmp_path, blocks, save):
    path = tmp_path / "renamed.mat"
    save(path, blocks, "x")
    np.testing.assert_array_equal(load_blocks(path), blocks)


def _two_vars_v5(path: Path, blocks: np.ndarray) -> None:
    scipy.io.savemat(path, {"foo": blocks, "bar": blocks})


def _two_vars_v73(path: Path, blocks: np.ndarray) -> None:
    with h5py.File(path, "w") as f:
        f["foo"] = blocks.transpose()
        f["bar"] = blocks.transpose()


def _truncated_v5(path: Path, blocks: np.ndarray) -> None:
    save_blocks_mat(path, blocks, path.stem)
    path.write_bytes(path.read_bytes()[:300])


def _corrupt_v73(path: Path, blocks: np.ndarray) -> None:
    save_blocks_mat73(path, blocks, path.stem)
    path.write_bytes(path.read_bytes()[:2000])


BAD_MAT_FILES = {
    "missing": lambda path, blocks: None,
    "text": lambda path, blocks: path.write_text("not a mat file\n" * 20),
    "empty": lambda path, blocks: path.write_bytes(b""),
    "truncated_v5": _truncated_v5,
    "corrupt_v73": _corrupt_v73,
    "no_matching_variable_v5": _two_vars_v5,
    "no_matching_variable_v73": _two_vars_v73,
    "no_numeric_array": lambda path, blocks: scipy.io.savemat(path, {"note": "hello"}),
    "four_dims_v5": lambda path, blocks: save_blocks_mat(path, blocks[0], path.stem),
    "four_dims_v73": lambda path, blocks: save_blocks_mat73(path, blocks[0], path.stem),
    "four_channels": lambda path, blocks: save_blocks_mat(path, blocks[..., [0, 1, 2, 2]], "x"),
    "float_v5": lambda path, blocks: save_blocks_mat(path, blocks / 255.0, path.stem),
    "float_v73": lambda path, blocks: save_blocks_mat73(path, blocks.astype(np.float32), path.stem),
}


@pytest.mark.parametrize("case", sorted(BAD_MAT_FILES))
def test_load_blocks_errors_name_the_file(tmp_path, blocks, case):
    path = tmp_path / f"Blocks_{case}.mat"
    BAD_MAT_FILES[case](path, blocks)
    with pytest.raises(UserError) as error:
        load_blocks(path)
    message = str(error.value)
    assert path.name in message and "\n" not in message


def test_load_blocks_error_lists_what_was_found(tmp_path, blocks):
    path = tmp_path / "ValidationNoisyBlocksSrgb.mat"
    _two_vars_v5(path, blocks)
    expected = r"no variable 'ValidationNoisyBlocksSrgb' \(found: bar, foo\)"
    with pytest.raises(UserError, match=expected):
        load_blocks(path)


def test_find_noisy_images_on_a_sidd_medium_tree(tmp_path):
    expected = []
    for scene in ("0002_002_IP_00800_01000_5500_N", "0001_001_S6_00100_00060_3200_L"):
        for kind in ("GT", "NOISY"):
            for shot in ("010", "011"):
                path = tmp_path / "Data" / scene / f"{scene}_{kind}_SRGB_{shot}.PNG"
                write_png(path, (4, 4, 3))
                if kind == "NOISY":
                    expected.append(path)
    (tmp_path / "Data" / "._junk_NOISY_SRGB_010.PNG").write_bytes(b"macOS resource fork")
    (tmp_path / "ReadMe.txt").write_text("SIDD")
    assert find_noisy_images(tmp_path) == sorted(expected)


def test_find_noisy_images_on_a_plain_folder(tmp_path):
    names = ["a.png", "b/c.JPG", "b/d/e.tiff", "f.Bmp", "g.jpeg", "h.TIF", "i_GT.png"]
    for name in names:
        write_png(tmp_path / name, (4, 4, 3))
    (tmp_path / "notes.txt").write_text("x")
    assert find_noisy_images(tmp_path) == sorted(tmp_path / n for n in names)


def test_find_noisy_images_errors(tmp_path):
    with pytest.raises(UserError, match="missing"):
        find_noisy_images(tmp_path / "missing")
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(UserError, match=r"\.png.*\.tiff"):
        find_noisy_images(tmp_path)


def test_prepare_patches_covers_and_resumes(tmp_path, monkeypatch):
    src, out = tmp_path / "src", tmp_path / "out"
    big = write_png(src / "s1" / "s1_NOISY_SRGB_010.PNG", (1000, 700, 3), seed=1)
    small = write_png(src / "s2" / "s2_NOISY_SRGB_010.PNG", (300, 200, 3), seed=2)
    write_png(src / "s1" / "s1_GT_SRGB_010.PNG", (1000, 700, 3))

    patches = prepare_patches(src, out, 512, 384)
    assert all(p.suffix == ".png" and "GT" not in p.name for p in patches)
    coverage = np.zeros(big.shape[:2], int)
    offsets = set()
    for patch in patches:
        if not patch.name.startswith("s1_"):
            continue
        y, x = (int(v) for v in re.findall(r"_y(\d+)_x(\d+)\.png$", patch.name)[0])
        offsets.add((y, x))
        pixels = cv2.imread(str(patch), cv2.IMREAD_UNCHANGED)
        assert pixels.shape == (512, 512, 3)
        np.testing.assert_array_equal(pixels, big[y : y + 512, x : x + 512])
        coverage[y : y + 512, x : x + 512] += 1
    assert offsets == {(y, x) for y in (0, 384, 488) for x in (0, 188)}
    assert coverage.min() >= 1
    (whole,) = [p for p in patches if p.name.startswith("s2_")]
    assert whole == out / "s2" / "s2_NOISY_SRGB_010_y0000_x0000.png"
    np.testing.assert_array_equal(cv2.imread(str(whole), cv2.IMREAD_UNCHANGED), small)

    patches[0].unlink()
    written = []
    monkeypatch.setattr(sidd, "write_pixels", lambda path, pixels: written.append(path))
    assert prepare_patches(src, out, 512, 384) == patches
    assert written == [patches[0]]


def test_prepare_patches_refuses_bad_arguments(tmp_path):
    write_png(tmp_path / "a.png", (8, 8, 3))
    with pytest.raises(UserError, match="stride"):
        prepare_patches(tmp_path, tmp_path.parent / "out", size=64, stride=65)
    with pytest.raises(UserError, match="inside"):
        prepare_patches(tmp_path, tmp_path / "patches", 64, 32)
