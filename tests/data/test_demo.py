"""The embedded demo dataset (ambsn_jax.data.demo): layout, statistics, determinism, caching."""

from __future__ import annotations

import json
import re
from pathlib import Path

import cv2
import numpy as np
import pytest
import scipy.io

from ambsn_jax.data import demo
from ambsn_jax.data.demo import demo_root
from ambsn_jax.data.sidd import find_noisy_images, load_blocks
from ambsn_jax.errors import UserError
from ambsn_jax.train.distill import clean_sources
from tests.helpers import neighbour_correlation, psnr_u8

SCENE_ID = re.compile(r"^\d{4}_\d{3}_(S6|IP|GP|N6|G4)_\d{5}_\d{5}_\d{4}_[LNH]$")


@pytest.fixture(scope="session")
def demo_build(tmp_path_factory) -> Path:
    """The demo dataset built once in a fresh cache (how long it takes is bench/'s business)."""
    return demo_root(tmp_path_factory.mktemp("cache"))


def _training_images(root: Path, kind: str) -> list[Path]:
    return sorted((root / "SIDD_Medium_Srgb" / "Data").glob(f"*/*_{kind}_SRGB_*.PNG"))


def test_demo_layout(demo_build):
    root = demo_build
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
        assert psnr_u8(gt, cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)) > 38
        assert all(n.shape == gt.shape for n in noisy)
        assert not np.array_equal(noisy[0], noisy[1])  # two noise draws
    for stem in ("ValidationNoisyBlocksSrgb", "ValidationGtBlocksSrgb"):
        assert scipy.io.matlab.matfile_version(root / f"{stem}.mat")[0] == 1  # MATLAB v5
        blocks = load_blocks(root / f"{stem}.mat")
        assert blocks.shape == (2, 8, 64, 64, 3) and blocks.dtype == np.uint8


def test_demo_second_call_reuses_the_built_dataset(demo_build, monkeypatch):
    root = demo_build
    before = {p: p.stat().st_mtime_ns for p in root.rglob("*")}

    def rebuild(out):
        raise AssertionError("a complete demo dataset was built again")

    monkeypatch.setattr(demo, "_build", rebuild)
    assert demo_root(root.parent) == root
    assert {p: p.stat().st_mtime_ns for p in root.rglob("*")} == before


def test_demo_validation_psnr_and_correlation(demo_build):
    root = demo_build
    noisy = load_blocks(root / "ValidationNoisyBlocksSrgb.mat")
    clean = load_blocks(root / "ValidationGtBlocksSrgb.mat")
    pairs = zip(clean.reshape(-1, 64, 64, 3), noisy.reshape(-1, 64, 64, 3))
    per_block = [psnr_u8(c, n) for c, n in pairs]
    assert 25 <= np.mean(per_block) <= 30
    assert neighbour_correlation(noisy, clean) >= 0.3
    for gt_path in _training_images(root, "GT"):
        gt = cv2.imread(str(gt_path))
        (noisy_path,) = [p for p in gt_path.parent.iterdir() if "NOISY_SRGB_010" in p.name]
        assert 23 <= psnr_u8(gt, cv2.imread(str(noisy_path))) <= 32


def test_demo_validation_photos_are_not_trained_on(demo_build):
    root = demo_build
    manifest = json.loads((root / demo.MANIFEST).read_text())
    assert not set(manifest["train"].values()) & set(manifest["validation"])
    # data.fresh_noise trains on these ground truths (noised afresh), the images checked below.
    assert clean_sources(find_noisy_images(root / "SIDD_Medium_Srgb")) == _training_images(root, "GT")
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
    root = demo_build
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
    root = demo_build
    found = find_noisy_images(root)
    assert found == _training_images(root, "NOISY") and len(found) == 2 * len(
        list((root / "SIDD_Medium_Srgb" / "Data").iterdir())
    )
