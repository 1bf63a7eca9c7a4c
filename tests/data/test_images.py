"""Image files (ambsn_jax.data.images): reading for the network, writing back in the input's form."""

from __future__ import annotations

import re
import struct

import cv2
import numpy as np
import pytest

from ambsn_jax.data.images import ImageInfo, from_network, list_images, read_image, to_network, write_image
from ambsn_jax.errors import UserError
from tests.helpers import write_png


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
        write_png(tmp_path / name, (2, 2, 3))
    (tmp_path / "d.txt").write_text("x")
    assert list_images(tmp_path) == [tmp_path / "a.jpg", tmp_path / "b.PNG"]
    assert list_images(tmp_path, recursive=True)[-1] == tmp_path / "sub" / "c.png"
    assert list_images(tmp_path / "d.txt") == [tmp_path / "d.txt"]
    with pytest.raises(UserError, match="nowhere"):
        list_images(tmp_path / "nowhere")


@pytest.mark.parametrize(
    "samples, mode",
    [
        (np.arange(12, dtype=np.uint8).reshape(3, 4), "gray"),
        (np.arange(12, dtype=np.uint16).reshape(3, 4, 1) * 5000, "gray"),
        (np.arange(36, dtype=np.uint8).reshape(3, 4, 3), "rgb"),
        (np.arange(48, dtype=np.uint16).reshape(3, 4, 4) * 1000, "rgba"),
    ],
)
def test_to_network_and_back_is_the_identity(samples, mode):
    rgb, info = to_network(samples, "the array")
    assert rgb.shape == (3, 4, 3) and rgb.dtype == np.float32 and info.mode == mode
    depth_scale = 257.0 if samples.dtype == np.uint16 else 1.0
    np.testing.assert_allclose(rgb[..., 0] * depth_scale, samples.reshape(3, 4, -1)[..., 0], rtol=1e-6)
    back = from_network(rgb, info)
    assert back.dtype == samples.dtype
    np.testing.assert_array_equal(back, samples.reshape(3, 4) if samples.ndim == 3 and samples.shape[2] == 1 else samples)


def test_to_network_refuses_what_is_no_image():
    with pytest.raises(UserError, match=r"^the array: float32 samples are not supported"):
        to_network(np.zeros((2, 2, 3), np.float32), "the array")
    with pytest.raises(UserError, match=r"^x.png: shape \(2, 2, 2\) is not a gray"):
        to_network(np.zeros((2, 2, 2), np.uint8), "x.png")
    with pytest.raises(ValueError, match="alpha"):
        from_network(np.zeros((2, 2, 3), np.float32), ImageInfo(depth=8, mode="rgba", alpha=None))
