"""Request bodies -> samples: the format from the first bytes, the size from the header alone,
every accepted depth and channel count decoded as stored (RGB-ordered)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from ambsn_jax.serve.upload import RequestError, decode_upload, header_size, image_format
from tests.serve.helpers import png_declaring


@pytest.mark.parametrize(
    "start, name", [(b"\x89PNG\r\n\x1a\n", "PNG"), (b"\xff\xd8\xff\xe0", "JPEG"), (b"II*\x00", "TIFF"), (b"MM\x00*", "TIFF")]
)
def test_the_format_comes_from_the_first_bytes(start, name):
    assert image_format(start + bytes(8)) == name


def test_the_size_is_read_without_decoding():
    # Headers saying 20,000 x 8,000 and 70,000 x 80,000 over no pixel data at all.
    large, bomb = png_declaring(20_000, 8_000), png_declaring(70_000, 80_000)
    assert header_size(large, "PNG") == (20_000, 8_000)
    with pytest.raises(RequestError) as refused:
        decode_upload(large, max_pixels=10**8)
    assert refused.value.status == 413 and "20000 x 8000 = 160000000 pixels" in refused.value.message
    # Past Pillow's own guard (179 M pixels) it refuses first, whatever our limit: still a 413.
    with pytest.raises(RequestError) as refused:
        decode_upload(bomb, max_pixels=10**10)
    assert refused.value.status == 413 and refused.value.kind == "too_many_pixels"


@pytest.mark.parametrize("ext", [".png", ".tif"])
@pytest.mark.parametrize("shape, dtype", [((9, 7), np.uint16), ((9, 7, 3), np.uint16), ((9, 7, 4), np.uint8)])
def test_samples_come_back_as_stored_in_rgb_order(ext, shape, dtype):
    samples = np.random.default_rng(0).integers(0, np.iinfo(dtype).max, shape, dtype=dtype)
    bgr = samples if samples.ndim == 2 else samples[:, :, [2, 1, 0, *range(3, shape[2])]]
    data = cv2.imencode(ext, bgr)[1].tobytes()
    got = decode_upload(data, max_pixels=63)
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, samples)
    with pytest.raises(RequestError, match="9 = 63 pixels; this server takes up to 62"):
        decode_upload(data, max_pixels=62)
