"""Training images checked once before anything compiles (ambsn_jax.data.check): every bad
file listed in one error, or skipped with a warning (data.skip_bad)."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest

from ambsn_jax.cli.train import main
from ambsn_jax.data.check import checked_images
from ambsn_jax.data.sidd import prepare_patches
from ambsn_jax.errors import UserError
from tests.helpers import one_error_line, write_png

REASONS = {
    "truncated.png": "not a readable image",
    "gray.png": "1 channel(s), not 3",
    "rgba.png": "4 channel(s), not 3",
    "small.png": "20x30, smaller than the 25x25 training crop",
}


@pytest.fixture
def bad_folder(tmp_path) -> Path:
    folder = tmp_path / "data"
    for i in range(3):
        write_png(folder / f"img{i}.png", (36, 44, 3), seed=i)
    write_png(folder / "deep.png", (30, 30, 3)).astype(np.uint16)
    cv2.imwrite(str(folder / "deep.png"), np.full((30, 30, 3), 40000, np.uint16))  # 16 bit: fine
    good = (folder / "img0.png").read_bytes()
    (folder / "truncated.png").write_bytes(good[: len(good) // 2])
    cv2.imwrite(str(folder / "gray.png"), np.full((36, 44), 128, np.uint8))
    cv2.imwrite(str(folder / "rgba.png"), np.full((36, 44, 4), 128, np.uint8))
    cv2.imwrite(str(folder / "small.png"), np.full((30, 20, 3), 128, np.uint8))
    return folder


def test_bad_images_are_all_listed_in_one_error(bad_folder, tmp_path, capsys):
    paths = sorted(bad_folder.glob("*.png"))
    with pytest.raises(UserError) as e:
        checked_images(paths, 25, skip_bad=False)
    text = str(e.value)
    assert text.startswith("4 of 8 training images are unusable: ") and text.endswith("or set data.skip_bad=true to train without them")
    for name, reason in REASONS.items():
        assert f"{bad_folder / name}: {reason}" in text
    assert "img0.png" not in text and "deep.png" not in text

    kept = checked_images(paths, 25, skip_bad=True)
    assert [p.name for p in kept] == ["deep.png", "img0.png", "img1.png", "img2.png"]
    warning = capsys.readouterr().err
    assert warning.startswith("warning: skipping 4 of 8 training images: ") and all(n in warning for n in REASONS)

    # Nothing good at all: refused even with skip_bad.
    with pytest.raises(UserError, match="2 of 2 training images are unusable"):
        checked_images([bad_folder / "gray.png", bad_folder / "small.png"], 25, skip_bad=True)


def test_cutting_patches_checks_the_sources_and_keeps_the_good_ones(bad_folder, tmp_path, capsys):
    with pytest.raises(UserError, match="4 of 8 training images are unusable") as e:
        prepare_patches(bad_folder, tmp_path / "patches", 32, 32, crop=25)
    assert all(str(bad_folder / name) in str(e.value) for name in REASONS)
    # The good sources were cut before the refusal: a rerun keeps them.
    assert sorted(p.name.split("_")[0] for p in (tmp_path / "patches").glob("*.png")) == ["deep"] + ["img0"] * 4 + ["img1"] * 4 + ["img2"] * 4
    patches = prepare_patches(bad_folder, tmp_path / "patches", 32, 32, crop=25, skip_bad=True)
    assert len(patches) == 13
    assert capsys.readouterr().err.startswith("warning: skipping 4 of 8 training images")


def test_training_refuses_bad_data_before_compiling(bad_folder, tmp_path, capsys):
    workdir = tmp_path / "run"
    argv = ["--config", "demo", "--data-dir", str(bad_folder), "--workdir", str(workdir),
            "--set", "data.patches=false", "data.crop=25", "train.pd=5", "val.dir=null"]  # fmt: skip
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err, "4 of 8 training images are unusable")
    assert "data.skip_bad=true" in line
    assert not workdir.exists() or not (workdir / "checkpoints").exists()
