"""Training images checked once, before anything is compiled: every bad file in one message.

Refused for training: files that do not decode in full (cv2.imdecode returns None for a cut
PNG or JPEG), samples that are not 8 or 16 bit, images that are not RGB (gray and RGBA
images are fine to denoise but would teach a colour network wrong statistics: gray has
identical channels, RGBA's alpha is dropped by the reader), and images smaller than the
training crop. With `data.skip_bad` the good ones train and the bad ones are listed in a
warning.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from ambsn_jax.data.images import read_pixels
from ambsn_jax.errors import UserError

_SHOWN = 20  # bad files listed in full; a whole broken dataset is summarised after these


def problem(path: Path, pixels: np.ndarray, crop: int) -> str | None:
    """Why the decoded samples of `path` cannot train, or None."""
    if pixels.dtype not in (np.uint8, np.uint16):
        return f"{pixels.dtype} samples, not 8 or 16 bit"
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    if channels != 3:
        return f"{channels} channel(s), not 3 (RGB)"
    height, width = pixels.shape[:2]
    if height < crop or width < crop:
        return f"{width}x{height}, smaller than the {crop}x{crop} training crop"
    return None


def inspect(path: Path, crop: int) -> tuple[np.ndarray | None, str | None]:
    """(samples, None) for a good training image, (None, reason) for a bad one."""
    try:
        pixels = read_pixels(path)
    except UserError as e:
        # read_pixels names the file first; the list names it already.
        return None, str(e).removeprefix(f"{path}: ")
    reason = problem(path, pixels, crop)
    return (None, reason) if reason else (pixels, None)


def report(bad: dict[Path, str], total: int, skip_bad: bool) -> None:
    """Refuses the run listing `bad` {path: reason} (or, with `skip_bad`, warns)."""
    if not bad:
        return
    lines = [f"{path}: {reason}" for path, reason in list(bad.items())[:_SHOWN]]
    if len(bad) > _SHOWN:
        lines.append(f"... and {len(bad) - _SHOWN} more")
    listing = "; ".join(lines)
    if skip_bad and len(bad) < total:
        print(f"warning: skipping {len(bad)} of {total} training images: {listing}", file=sys.stderr)
        return
    fix = "fix or remove them" if skip_bad else "fix or remove them, or set data.skip_bad=true to train without them"
    raise UserError(f"{len(bad)} of {total} training images are unusable: {listing}; {fix}")


def checked_images(paths: Sequence[Path], crop: int, skip_bad: bool) -> list[Path]:
    """The good ones of `paths`, each decoded once in full; refuses or warns as `report` does."""
    bad = {}
    for path in paths:
        _, reason = inspect(path, crop)
        if reason:
            bad[path] = reason
    report(bad, len(paths), skip_bad)
    return [p for p in paths if p not in bad]
