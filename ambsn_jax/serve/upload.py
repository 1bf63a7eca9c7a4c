"""Request bodies -> image samples, or a `RequestError` that says what is wrong in words.

Only PNG, JPEG and TIFF are taken. The pixel count is read from the file's header before
anything is decoded, so a small file that claims a huge image (a decompression bomb) is refused
without allocating it.
"""

from __future__ import annotations

import io
import warnings

import numpy as np

from ambsn_jax.data.images import decode_samples
from ambsn_jax.errors import UserError

# The first bytes of each accepted format, and its name in messages.
_MAGIC = {b"\x89PNG\r\n\x1a\n": "PNG", b"\xff\xd8\xff": "JPEG", b"II*\x00": "TIFF", b"MM\x00*": "TIFF"}


class RequestError(Exception):
    """A refused request: HTTP status, a machine-readable kind, a sentence for people."""

    def __init__(self, status: int, kind: str, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.kind, self.message, self.headers = status, kind, message, headers or {}


def image_format(data: bytes) -> str:
    """'PNG', 'JPEG' or 'TIFF' from the body's first bytes; anything else is refused (415)."""
    for magic, name in _MAGIC.items():
        if data.startswith(magic):
            return name
    if not data:
        raise RequestError(400, "empty_body", "the request has no body; POST the bytes of a PNG, JPEG or TIFF image")
    raise RequestError(415, "unsupported_media_type", "the body is not a PNG, JPEG or TIFF image")


def header_size(data: bytes, fmt: str) -> tuple[int, int]:
    """(width, height) as the file's header states them, without decoding the pixels."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            # Pillow warns of its own bomb limit (ours is checked instead) and of odd metadata:
            # a request's problems are answered to its client, not logged as warnings.
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                return image.size
    except Image.DecompressionBombError as e:
        raise RequestError(413, "too_many_pixels", f"the {fmt} header declares an image far too large ({e})") from e
    except Exception as e:  # Pillow raises many types for a broken header
        raise RequestError(400, "corrupt_image", f"the {fmt} image's header cannot be read ({e})") from e


def decode_upload(data: bytes, max_pixels: int) -> np.ndarray:
    """The body's image as RGB-ordered uint8 / uint16 samples (gray, RGB or RGBA)."""
    fmt = image_format(data)
    width, height = header_size(data, fmt)
    if width * height > max_pixels:
        raise RequestError(
            413, "too_many_pixels", f"the image is {width} x {height} = {width * height} pixels; this server takes up to {max_pixels}"
        )
    try:
        samples = decode_samples(data, "the uploaded image")
    except UserError as e:
        raise RequestError(400, "corrupt_image", f"the {fmt} image cannot be decoded: it is truncated or damaged") from e
    # An EXIF orientation turns a JPEG a quarter: its header's sides come back swapped.
    if samples.shape[:2] != (height, width) and not (fmt == "JPEG" and samples.shape[:2] == (width, height)):
        raise RequestError(400, "corrupt_image", f"the {fmt} image decodes to {samples.shape[:2]}, not its header's {height} x {width}")
    if samples.ndim == 3 and samples.shape[2] not in (1, 3, 4) or samples.dtype not in (np.uint8, np.uint16):
        raise RequestError(415, "unsupported_image", f"{samples.dtype} samples in {samples.shape} are not 8/16-bit gray, RGB or RGBA")
    return samples
