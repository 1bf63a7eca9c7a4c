"""The DND sRGB benchmark (ambsn_jax.evaluation.dnd), in the layout of its submission kit."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.io

from ambsn_jax.errors import UserError
from ambsn_jax.evaluation import dnd
from ambsn_jax.inference.keys import item_keys
from ambsn_jax.inference.release import postprocess
from ambsn_jax.inference.tiling import denoise_image
from tests.helpers import RELEASE, bound, evaluate, fake_dnd, no_temp_files


def test_dnd_writes_the_kits_box_and_bundled_files(model, ckpt, capsys, tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (30, 34, 3)) for _ in range(2)]
    boxes = [[[3, 5, 18, 24], [1, 1, 16, 16]], [[10, 12, 27, 27], [5, 2, 20, 17]]]  # [r1 c1 r2 c2], 1-based
    fake_dnd(tmp_path / "dnd", images, boxes)
    out = tmp_path / "sub"
    code, stdout, err = evaluate(["--ckpt", ckpt, "--dnd", tmp_path / "dnd", "--submission-dir", out, "--no-r3"], capsys)
    assert code == 0, err
    assert "wrote 4 boxes" in stdout and f"upload {out / 'bundled'}" in stdout

    denoiser = bound(model, dataclasses.replace(RELEASE, r3=False))
    n = 0
    for i, (image, image_boxes) in enumerate(zip(images, boxes), start=1):
        bundled = scipy.io.loadmat(out / "bundled" / f"{i:04d}.mat")
        assert bundled["Idenoised"].shape == (1, 2) and bool(bundled["israw"]) is False
        assert bundled["eval_version"][0] == "1.0"
        for k, (r1, c1, r2, c2) in enumerate(image_boxes, start=1):
            crop = scipy.io.loadmat(out / f"{i:04d}_{k:02d}.mat")["Idenoised_crop"]
            assert crop.dtype == np.float32 and crop.shape == (r2 - r1 + 1, c2 - c1 + 1, 3)
            noisy = image[r1 - 1 : r2, c1 - 1 : c2].astype(np.float32) * 255
            want = np.asarray(postprocess(denoise_image(denoiser, noisy, item_keys(0, [n])[0]))) / 255
            np.testing.assert_array_equal(crop, want.astype(np.float32))
            np.testing.assert_array_equal(bundled["Idenoised"][0, k - 1], crop)
            n += 1
    assert no_temp_files(out)


def test_read_boxes_and_noisy_images(tmp_path):
    image = np.linspace(0, 1, 6 * 5 * 3).reshape(6, 5, 3)
    root = fake_dnd(tmp_path / "d", [image], [[[1, 2, 3, 4], [2, 2, 6, 5]]])
    boxes = dnd.read_boxes(root)
    assert len(boxes) == 1 and boxes[0].dtype == np.int64
    np.testing.assert_array_equal(boxes[0], [[1, 2, 3, 4], [2, 2, 6, 5]])
    np.testing.assert_allclose(dnd.read_noisy(root, 1), image.astype(np.float32))
    with pytest.raises(UserError, match="0002.mat: no such file; info.mat lists image 2"):
        dnd.read_noisy(root, 2)
