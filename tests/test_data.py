"""Tests of the data layer: camera noise, the demo dataset, SIDD formats and image files."""

from __future__ import annotations

import json
import re
import struct
import time
from pathlib import Path

import cv2
import h5py
import numpy as np
import pytest
import scipy.io
import skimage.data
from skimage.metrics import peak_signal_noise_ratio

from ambsn_jax.data import demo, sidd
from ambsn_jax.data.camera_noise import (
    CameraNoiseParams,
    add_camera_noise,
    apply_camera_noise,
    sample_camera_params,
)
from ambsn_jax.data.demo import demo_root
from ambsn_jax.data.images import ImageInfo, list_images, read_image, write_image
from ambsn_jax.data.sidd import (
    find_noisy_images,
    load_blocks,
    prepare_patches,
    save_blocks_mat,
    save_blocks_mat73,
)
from ambsn_jax.errors import UserError

SCENE_ID = re.compile(r"^\d{4}_\d{3}_(S6|IP|GP|N6|G4)_\d{5}_\d{5}_\d{4}_[LNH]$")


def psnr(clean: np.ndarray, noisy: np.ndarray) -> float:
    return float(peak_signal_noise_ratio(clean, noisy, data_range=255))


def neighbour_correlation(noisy: np.ndarray, clean: np.ndarray) -> float:
    """Correlation of the noise of horizontally adjacent pixels (axis -2 is the width)."""
    residual = noisy.astype(np.float64) - clean
    return float(np.corrcoef(residual[..., :-1, :].ravel(), residual[..., 1:, :].ravel())[0, 1])


@pytest.fixture(scope="module")
def phone_photo() -> np.ndarray:
    """A smooth RGB uint8 photo, like the demo's: a crop of astronaut upscaled 3x."""
    crop = skimage.data.astronaut()[100:228, 150:278]
    return cv2.resize(crop, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)


# --- camera noise -------------------------------------------------------------------------


def test_pipeline_without_noise_gives_back_the_photo(phone_photo):
    # Catches a wrong Bayer code, a swapped white balance or a wrong sRGB curve: each of those
    # shifts colours by far more than the demosaic's interpolation error.
    silent = CameraNoiseParams(iso=1600, shot=0.0, read=0.0, red_gain=2.2, blue_gain=1.7)
    out = apply_camera_noise(phone_photo, silent, np.random.default_rng(0))
    assert out.shape == phone_photo.shape and out.dtype == np.uint8
    assert psnr(phone_photo, out) > 38
    channel_means = out.reshape(-1, 3).mean(0) - phone_photo.reshape(-1, 3).mean(0)
    assert np.abs(channel_means).max() < 1.0


def test_noise_is_spatially_correlated(phone_photo):
    noisy = add_camera_noise(phone_photo, np.random.default_rng(1))
    assert neighbour_correlation(noisy, phone_photo) >= 0.3
    # The measure itself: independent noise shows no correlation.
    white = phone_photo + np.random.default_rng(1).normal(0, 10, phone_photo.shape)
    assert abs(neighbour_correlation(white, phone_photo)) < 0.05


def test_noise_is_deterministic_per_generator(phone_photo):
    first = add_camera_noise(phone_photo, np.random.default_rng(7))
    again = add_camera_noise(phone_photo, np.random.default_rng(7))
    other = add_camera_noise(phone_photo, np.random.default_rng(8))
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_noisy_psnr_is_that_of_a_phone(phone_photo):
    noisy = [add_camera_noise(phone_photo, np.random.default_rng(seed)) for seed in range(8)]
    values = [psnr(phone_photo, n) for n in noisy]
    assert 25 <= np.mean(values) <= 30
    assert 23.5 <= min(values) and max(values) <= 31.5


def test_sampled_parameters_stay_in_range():
    for seed in range(50):
        p = sample_camera_params(np.random.default_rng(seed))
        assert 1000 <= p.iso <= 2500
        assert 1.9 <= p.red_gain <= 2.4 and 1.5 <= p.blue_gain <= 1.9
        assert p.shot > 0 and p.read > 0


def test_noise_on_odd_sizes_and_bad_input():
    odd = np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    assert add_camera_noise(odd, np.random.default_rng(0)).shape == (33, 47, 3)
    with pytest.raises(ValueError):
        add_camera_noise(odd.astype(np.float32), np.random.default_rng(0))


# --- demo dataset -------------------------------------------------------------------------


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> tuple[Path, float]:
    cache = tmp_path_factory.mktemp("cache")
    start = time.perf_counter()
    root = demo_root(cache)
    return root, time.perf_counter() - start


def _training_images(root: Path, kind: str) -> list[Path]:
    return sorted((root / "SIDD_Medium_Srgb" / "Data").glob(f"*/*_{kind}_SRGB_*.PNG"))


def test_demo_layout(demo_build):
    root, seconds = demo_build
    assert seconds < 60
    manifest = json.loads((root / demo.MANIFEST).read_text())
    assert manifest["version"] == demo.DEMO_VERSION and root.name == f"demo-v{demo.DEMO_VERSION}"
    scenes = sorted((root / "SIDD_Medium_Srgb" / "Data").iterdir())
    assert [s.name for s in scenes] == sorted(manifest["train"]) and len(scenes) >= 5
    for scene in scenes:
        assert SCENE_ID.match(scene.name), scene.name
        names = sorted(p.name for p in scene.iterdir())
        kinds = ("GT_SRGB_010", "NOISY_SRGB_010", "NOISY_SRGB_011")
        assert names == [f"{scene.name}_{kind}.PNG" for kind in kinds]
        gt = cv2.imread(str(scene / names[0]), cv2.IMREAD_UNCHANGED)
        noisy = [cv2.imread(str(scene / n), cv2.IMREAD_UNCHANGED) for n in names[1:]]
        assert gt.dtype == np.uint8 and gt.ndim == 3 and gt.shape[2] == 3
        assert max(gt.shape[:2]) <= 768 and min(gt.shape[:2]) >= 256
        # Smooth at the pixel scale, as a phone photo is: a 3x down- and up-scaling keeps it.
        height, width = gt.shape[:2]
        small = cv2.resize(gt, (width // 3, height // 3), interpolation=cv2.INTER_AREA)
        assert psnr(gt, cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)) > 38
        assert all(n.shape == gt.shape for n in noisy)
        assert not np.array_equal(noisy[0], noisy[1])  # two noise draws
    for stem in ("ValidationNoisyBlocksSrgb", "ValidationGtBlocksSrgb"):
        assert scipy.io.matlab.matfile_version(root / f"{stem}.mat")[0] == 1  # MATLAB v5
        blocks = load_blocks(root / f"{stem}.mat")
        assert blocks.shape == (2, 8, 64, 64, 3) and blocks.dtype == np.uint8


def test_demo_second_call_returns_at_once(demo_build):
    root, _ = demo_build
    start = time.perf_counter()
    assert demo_root(root.parent) == root
    assert time.perf_counter() - start < 0.05


def test_demo_validation_psnr_and_correlation(demo_build):
    root, _ = demo_build
    noisy = load_blocks(root / "ValidationNoisyBlocksSrgb.mat")
    clean = load_blocks(root / "ValidationGtBlocksSrgb.mat")
    pairs = zip(clean.reshape(-1, 64, 64, 3), noisy.reshape(-1, 64, 64, 3))
    per_block = [psnr(c, n) for c, n in pairs]
    assert 25 <= np.mean(per_block) <= 30
    assert neighbour_correlation(noisy, clean) >= 0.3
    for gt_path in _training_images(root, "GT"):
        gt = cv2.imread(str(gt_path))
        (noisy_path,) = [p for p in gt_path.parent.iterdir() if "NOISY_SRGB_010" in p.name]
        assert 23 <= psnr(gt, cv2.imread(str(noisy_path))) <= 32


def test_demo_validation_photos_are_not_trained_on(demo_build):
    root, _ = demo_build
    manifest = json.loads((root / demo.MANIFEST).read_text())
    assert not set(manifest["train"].values()) & set(manifest["validation"])
    # By content too: no validation block occurs anywhere in a training image (compared in
    # grey, a third of the cost).
    blocks = load_blocks(root / "ValidationGtBlocksSrgb.mat").reshape(-1, 64, 64, 3)
    grey_blocks = [cv2.cvtColor(block, cv2.COLOR_RGB2GRAY) for block in blocks]
    for gt_path in _training_images(root, "GT"):
        grey = cv2.imread(str(gt_path), cv2.IMREAD_GRAYSCALE)
        for block in grey_blocks:
            distance = cv2.matchTemplate(grey, block, cv2.TM_SQDIFF).min()
            assert distance / block.size > 4, gt_path.name  # mean squared difference per pixel


def test_demo_is_the_same_on_every_build(demo_build, tmp_path):
    root, _ = demo_build
    other = demo_root(tmp_path)
    images = _training_images(root, "NOISY") + _training_images(root, "GT")
    assert images
    for path in images:
        assert path.read_bytes() == (other / path.relative_to(root)).read_bytes(), path.name
    for mat in root.glob("*.mat"):
        assert np.array_equal(load_blocks(mat), load_blocks(other / mat.name))


def test_interrupted_demo_build_leaves_nothing(tmp_path, monkeypatch):
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return np.zeros((768, 768, 3), np.uint8)

    monkeypatch.setattr(demo, "apply_camera_noise", interrupted)
    with pytest.raises(KeyboardInterrupt):
        demo_root(tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_demo_default_cache_and_incomplete_root(tmp_path, monkeypatch):
    monkeypatch.setenv("AMBSN_CACHE", str(tmp_path))
    root = tmp_path / f"demo-v{demo.DEMO_VERSION}"
    root.mkdir()
    with pytest.raises(UserError, match=re.escape(str(root))):
        demo_root()
    (root / demo.MANIFEST).write_text("{}")  # a complete dataset is recognised, not rebuilt
    assert demo_root() == root
    assert [p.name for p in root.iterdir()] == [demo.MANIFEST]


def test_find_noisy_images_on_the_demo(demo_build):
    root, _ = demo_build
    found = find_noisy_images(root)
    assert found == _training_images(root, "NOISY") and len(found) == 2 * len(
        list((root / "SIDD_Medium_Srgb" / "Data").iterdir())
    )


# --- SIDD .mat files ----------------------------------------------------------------------


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


# --- SIDD Medium folders and patches ------------------------------------------------------


def _write_png(path: Path, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), pixels)
    return pixels


def test_find_noisy_images_on_a_sidd_medium_tree(tmp_path):
    expected = []
    for scene in ("0002_002_IP_00800_01000_5500_N", "0001_001_S6_00100_00060_3200_L"):
        for kind in ("GT", "NOISY"):
            for shot in ("010", "011"):
                path = tmp_path / "Data" / scene / f"{scene}_{kind}_SRGB_{shot}.PNG"
                _write_png(path, (4, 4, 3))
                if kind == "NOISY":
                    expected.append(path)
    (tmp_path / "Data" / "._junk_NOISY_SRGB_010.PNG").write_bytes(b"macOS resource fork")
    (tmp_path / "ReadMe.txt").write_text("SIDD")
    assert find_noisy_images(tmp_path) == sorted(expected)


def test_find_noisy_images_on_a_plain_folder(tmp_path):
    names = ["a.png", "b/c.JPG", "b/d/e.tiff", "f.Bmp", "g.jpeg", "h.TIF", "i_GT.png"]
    for name in names:
        _write_png(tmp_path / name, (4, 4, 3))
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
    big = _write_png(src / "s1" / "s1_NOISY_SRGB_010.PNG", (1000, 700, 3), seed=1)
    small = _write_png(src / "s2" / "s2_NOISY_SRGB_010.PNG", (300, 200, 3), seed=2)
    _write_png(src / "s1" / "s1_GT_SRGB_010.PNG", (1000, 700, 3))

    patches = prepare_patches(src, out)
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
    assert prepare_patches(src, out) == patches
    assert written == [patches[0]]


def test_prepare_patches_refuses_bad_arguments(tmp_path):
    _write_png(tmp_path / "a.png", (8, 8, 3))
    with pytest.raises(UserError, match="stride"):
        prepare_patches(tmp_path, tmp_path.parent / "out", size=64, stride=65)
    with pytest.raises(UserError, match="inside"):
        prepare_patches(tmp_path, tmp_path / "patches")


# --- image files --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name, shape, dtype, mode",
    [
        ("rgb.png", (17, 23, 3), np.uint8, "rgb"),
        ("rgb16.png", (17, 23, 3), np.uint16, "rgb"),
        ("gray.png", (19, 11), np.uint8, "gray"),
        ("gray16.png", (19, 11), np.uint16, "gray"),
        ("rgba.png", (9, 13, 4), np.uint8, "rgba"),
        ("rgba16.png", (9, 13, 4), np.uint16, "rgba"),
        ("rgb16.tif", (7, 5, 3), np.uint16, "rgb"),
        ("rgb.bmp", (7, 5, 3), np.uint8, "rgb"),
    ],
)
def test_image_round_trip(tmp_path, name, shape, dtype, mode):
    stored = np.random.default_rng(3).integers(0, np.iinfo(dtype).max + 1, shape, dtype=dtype)
    assert cv2.imwrite(str(tmp_path / name), stored)
    image, info = read_image(tmp_path / name)
    assert image.shape == shape[:2] + (3,) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 255
    assert (info.depth, info.mode) == ({np.uint8: 8, np.uint16: 16}[dtype], mode)
    if mode == "gray":
        assert np.array_equal(image[..., 0], image[..., 2])
    else:  # OpenCV stores BGR: the red channel read is the file's third sample
        scale = 257 if dtype == np.uint16 else 1
        np.testing.assert_allclose(image[..., 0] * scale, stored[..., 2])

    out = tmp_path / "out" / name
    write_image(out, image, info)
    written = cv2.imread(str(out), cv2.IMREAD_UNCHANGED)
    assert written.dtype == stored.dtype
    np.testing.assert_array_equal(written, stored)
    assert [p.name for p in out.parent.iterdir()] == [name]  # no temporary left behind


def test_write_image_rounds_and_clips(tmp_path):
    values = np.array([[[-3.0, 0.49, 0.5], [254.5, 254.49, 300.0]]], np.float32)
    info = ImageInfo(depth=8, mode="rgb", alpha=None)
    write_image(tmp_path / "r.png", values, info)
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "r.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(written, [[[0, 0, 1], [255, 254, 255]]])
    gray16 = ImageInfo(depth=16, mode="gray", alpha=None)
    write_image(tmp_path / "g.png", np.full((1, 2, 3), 100.0, np.float32), gray16)
    written = cv2.imread(str(tmp_path / "g.png"), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(written, [[25700, 25700]])


def test_write_image_replaces_an_existing_file(tmp_path):
    path = tmp_path / "x.png"
    info = ImageInfo(depth=8, mode="rgb", alpha=None)
    write_image(path, np.zeros((2, 2, 3), np.float32), info)
    write_image(path, np.full((2, 2, 3), 9.0, np.float32), info)
    assert cv2.imread(str(path)).max() == 9
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]


def test_jpeg_is_read_upright(tmp_path):
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255  # a white stripe on the left
    jpeg = cv2.imencode(".jpg", stored)[1].tobytes()
    # EXIF APP1 with one IFD entry: Orientation (0x0112) = 6, "rotate 90 degrees clockwise".
    tiff = b"MM\x00*\x00\x00\x00\x08\x00\x01" + struct.pack(">HHIHH", 0x0112, 3, 1, 6, 0) + bytes(4)
    app1 = b"Exif\x00\x00" + tiff
    (tmp_path / "phone.jpg").write_bytes(
        jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(app1) + 2) + app1 + jpeg[2:]
    )
    image, info = read_image(tmp_path / "phone.jpg")
    assert image.shape == (40, 20, 3) and (info.depth, info.mode) == (8, "rgb")
    assert image[:10].mean() > 200 and image[-10:].mean() < 50  # the stripe is now on top


def test_image_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_text("not an image")
    for path in (bad, tmp_path / "missing.png", tmp_path):
        with pytest.raises(UserError, match=re.escape(path.name)):
            read_image(path)
    info = ImageInfo(depth=8, mode="rgb", alpha=None)
    with pytest.raises(UserError, match=r"out\.xyz"):
        write_image(tmp_path / "out.xyz", np.zeros((2, 2, 3), np.float32), info)
    with pytest.raises(UserError, match=r"below_a_file\.png: cannot write it"):
        write_image(bad / "below_a_file.png", np.zeros((2, 2, 3), np.float32), info)


def test_list_images(tmp_path):
    for name in ("b.PNG", "a.jpg", "sub/c.png", ".hidden.png"):
        _write_png(tmp_path / name, (2, 2, 3))
    (tmp_path / "d.txt").write_text("x")
    assert list_images(tmp_path) == [tmp_path / "a.jpg", tmp_path / "b.PNG"]
    assert list_images(tmp_path, recursive=True)[-1] == tmp_path / "sub" / "c.png"
    assert list_images(tmp_path / "d.txt") == [tmp_path / "d.txt"]
    with pytest.raises(UserError, match="nowhere"):
        list_images(tmp_path / "nowhere")
