"""PSNR and SSIM (ambsn_jax.metrics) as the release computes them."""

from __future__ import annotations

import warnings

import numpy as np
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ambsn_jax.metrics import psnr, ssim


def test_metrics_equal_skimage_on_float32():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (24, 20, 3)).astype(np.float32)
    test = clean + rng.normal(0, 30, clean.shape).astype(np.float32)  # leaves 0..255: clipped
    clipped = np.clip(test, 0, 255)
    assert psnr(clean, test) == peak_signal_noise_ratio(clean, clipped, data_range=255)
    assert ssim(clean, test) == structural_similarity(clean, clipped, channel_axis=2, data_range=255)
    # uint8 clean against a float result: scored as float32 like the release, without
    # skimage's mismatched-dtype warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ssim(clean.astype(np.uint8), test) == ssim(clean, test)
        assert psnr(clean.astype(np.uint8), test) == psnr(clean, test)
