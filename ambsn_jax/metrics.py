"""PSNR and SSIM exactly as the release computes them (docs/release.md, "Scores").

`ssim` (7x7 uniform window) is the release's and the headline number; `ssim_gaussian` is the
Gaussian-window SSIM of Wang et al. (2004), which many papers report instead, so that numbers
from either convention can be compared; `ssim_y` is TM-BSN's release's (the luma channel alone).
"""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def _pair(clean: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    # The release scores float32 tensors; skimage's SSIM keeps float32 inputs in float32, so
    # the dtype changes the last digits. Both the same dtype also avoids skimage's warning.
    return np.asarray(clean, np.float32), np.clip(np.asarray(test, np.float32), 0.0, 255.0)


def psnr(clean: np.ndarray, test: np.ndarray) -> float:
    """PSNR in dB of `test` against `clean`, both (H, W, 3) on the 0..255 scale."""
    return float(peak_signal_noise_ratio(*_pair(clean, test), data_range=255))


def ssim(clean: np.ndarray, test: np.ndarray) -> float:
    """SSIM with skimage's defaults (7x7 uniform window), channels averaged."""
    return float(structural_similarity(*_pair(clean, test), channel_axis=2, data_range=255))


def ssim_gaussian(clean: np.ndarray, test: np.ndarray) -> float:
    """SSIM of Wang et al.: 11x11 Gaussian window of sigma 1.5, population covariance.

    The settings are those scikit-image documents to match Wang et al.'s implementation.
    """
    return float(
        structural_similarity(
            *_pair(clean, test), channel_axis=2, data_range=255,
            gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        )
    )  # fmt: skip


def ssim_y(clean: np.ndarray, test: np.ndarray) -> float:
    """TM-BSN's release's SSIM (its `ssim_y_channel`): Y of scikit-image's `rgb2ycbcr` (16..235)
    of the uint8 images, 11x11 Gaussian window of sigma 1.5, sample covariance."""
    # rgb2ycbcr reads floats as 0..1: the release hands it uint8, and so is it here.
    y_clean, y_test = (rgb2ycbcr(np.clip(np.round(a), 0, 255).astype(np.uint8))[..., 0] for a in _pair(clean, test))
    return float(structural_similarity(y_test, y_clean, data_range=255, win_size=11, gaussian_weights=True, sigma=1.5))
