"""Classical denoisers beside the networks, scored on a SIDD-format validation set the way the
networks are (`bench/peers.py` builds the peer table from these).

Every peer here sees a noisy block alone, as a blind-spot network does: no clean image, no
noise level given. BM3D comes in two forms: correlated, with a noise PSD estimated from the
block itself (the demo's and SIDD's noise is spatially correlated by the demosaic), and white,
with scikit-image's sigma estimate (which assumes i.i.d. noise and so misses most of it).
BM3D (PyPI `bm3d`) is the optional extra `.[peers]`; it is imported only when asked for.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

import cv2
import numpy as np
from skimage.restoration import denoise_nl_means, estimate_sigma

from ambsn_jax.errors import UserError
from ambsn_jax.metrics import psnr, ssim, ssim_gaussian

Denoise = Callable[[np.ndarray], np.ndarray]  # uint8 (H, W, 3) -> denoised (H, W, 3) on 0..255

# The residual's blur and the autocorrelation's extent: the demosaic correlates a pixel with
# its neighbours up to 2 pixels away; lags past 3 hold mostly the estimate's own noise.
BLUR_SIGMA = 2.0
PSD_LAG = 3


def residual(noisy: np.ndarray) -> np.ndarray:
    """`noisy` (H, W, 3) on 0..1 minus its Gaussian blur: mostly noise, little image."""
    return noisy - cv2.GaussianBlur(noisy, (0, 0), BLUR_SIGMA, borderType=cv2.BORDER_REFLECT)


def estimate_psd(noisy: np.ndarray) -> np.ndarray:
    """The noise PSD (H, W, 3) of `noisy` (H, W, 3, 0..1) in BM3D's convention (unnormalised
    FFT: white noise of variance s^2 has PSD H * W * s^2), per channel: the FFT of the
    residual's autocorrelation, cut to lags of at most PSD_LAG (longer lags are estimate noise)."""
    h, w = noisy.shape[:2]
    r = residual(noisy.astype(np.float64))
    r -= r.mean(axis=(0, 1))
    spectrum = np.abs(np.fft.fft2(r, axes=(0, 1))) ** 2
    autocorr = np.real(np.fft.ifft2(spectrum, axes=(0, 1))) / (h * w)
    lags_y = np.minimum(np.arange(h), h - np.arange(h))[:, None]
    lags_x = np.minimum(np.arange(w), w - np.arange(w))[None, :]
    autocorr *= ((lags_y <= PSD_LAG) & (lags_x <= PSD_LAG))[..., None]
    psd = np.real(np.fft.fft2(autocorr, axes=(0, 1))) * (h * w)
    # A cut autocorrelation can give slightly negative power at some frequencies.
    return np.maximum(psd, 1e-3 * psd.mean())


def _bm3d():
    try:
        import bm3d
    except ImportError as e:
        raise UserError("BM3D needs the optional extra: pip install -e '.[peers]' (PyPI bm3d)") from e
    # bm4d 4.2.5 (bm3d's engine, the latest release) still calls np.trapz, removed in NumPy 2.4.
    if not hasattr(np, "trapz"):
        np.trapz = np.trapezoid
    return bm3d


def bm3d_psd(noisy: np.ndarray) -> np.ndarray:
    """BM3D for correlated noise (`bm3d_rgb`, PSD per channel estimated from `noisy` alone)."""
    z = noisy.astype(np.float64) / 255.0
    return 255.0 * _bm3d().bm3d_rgb(z, estimate_psd(z))


def bm3d_white(noisy: np.ndarray) -> np.ndarray:
    """BM3D for white noise, sigma from scikit-image's wavelet estimate."""
    z = noisy.astype(np.float64) / 255.0
    return 255.0 * _bm3d().bm3d_rgb(z, float(estimate_sigma(z, channel_axis=-1, average_sigmas=True)))


def nl_means(noisy: np.ndarray) -> np.ndarray:
    """scikit-image's non-local means, h = 0.8 sigma (its documented setting), sigma the
    residual's standard deviation: scikit-image's own estimate misses correlated noise."""
    z = noisy.astype(np.float64) / 255.0
    sigma = float(residual(z).std())
    out = denoise_nl_means(
        z, h=0.8 * sigma, sigma=sigma, patch_size=5, patch_distance=6, fast_mode=True, channel_axis=-1
    )
    return 255.0 * out


CLASSICAL: dict[str, Denoise] = {"bm3d_psd": bm3d_psd, "bm3d_white": bm3d_white, "nlm": nl_means}


def rounded(out: np.ndarray) -> np.ndarray:
    """A 0..255 float output as the release rounds it: +0.5, floor, clip, uint8."""
    return np.clip(np.floor(np.asarray(out, np.float64) + 0.5), 0, 255).astype(np.uint8)


def score_blocks(denoised: np.ndarray, clean: np.ndarray) -> dict[str, Any]:
    """Means over blocks (N, H, W, 3) of PSNR and both SSIM conventions, and the per-block PSNR."""
    per_block = [psnr(c, d) for c, d in zip(clean, denoised)]
    return {
        "psnr": float(np.mean(per_block)),
        "ssim": float(np.mean([ssim(c, d) for c, d in zip(clean, denoised)])),
        "ssim_gaussian": float(np.mean([ssim_gaussian(c, d) for c, d in zip(clean, denoised)])),
        "block_psnr": per_block,
    }


def denoise_each(denoise: Denoise, blocks: np.ndarray) -> np.ndarray:
    """Every block (N, H, W, 3) denoised on its own and rounded."""
    return np.stack([rounded(denoise(b)) for b in blocks])


def timing_image(blocks: np.ndarray, side: int) -> np.ndarray:
    """A side x side noisy image for timing: the blocks (N, H, W, 3) laid out in a grid,
    repeated as needed (content like the scored blocks', the size every peer is timed at)."""
    n, h, w = blocks.shape[:3]
    cols = max(int(np.sqrt(n)), 1)
    rows = n // cols
    grid = blocks[: rows * cols].reshape(rows, cols, h, w, 3).transpose(0, 2, 1, 3, 4).reshape(rows * h, cols * w, 3)
    reps = (-(-side // grid.shape[0]), -(-side // grid.shape[1]), 1)
    return np.ascontiguousarray(np.tile(grid, reps)[:side, :side])


def seconds_per_call(run: Callable[[], Any], repeats: int) -> float:
    """Median wall time of `run()` over `repeats` calls, after one call not counted (compile, caches)."""
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)
