"""Realistic phone-camera noise for clean sRGB images.

A clean image is taken back to what the sensor would have recorded, noised there and developed
again: sRGB -> linear -> inverse white balance -> RGGB mosaic -> shot + read noise -> 16-bit
quantisation -> OpenCV demosaic -> white balance -> sRGB -> uint8. The demosaic interpolates each
missing colour from neighbouring photosites, so the noise of neighbouring output pixels is
correlated, as in SIDD: the reason blind-spot networks need pixel-shuffle down-sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

# Variances (linear signal in 0..1) at ISO 1600, chosen so that the developed sRGB image of
# ordinary content has a PSNR of about 25-30 dB over the ISO range: the middle of a phone's
# ISO 800-3200, narrowed so that a draw does not leave that PSNR window (each ISO doubling
# costs 3 dB).
_SHOT_AT_ISO_1600 = 5.6e-3
_READ_AT_ISO_1600 = 2.8e-5
_ISO_RANGE = (1000.0, 2500.0)
_RED_GAIN_RANGE = (1.9, 2.4)
_BLUE_GAIN_RANGE = (1.5, 1.9)


@dataclass(frozen=True)
class CameraNoiseParams:
    """One camera setting: the noise level and the white balance the image was developed with.

    `shot` and `read` are the variances of the noise model var(x) = shot * x + read, on the linear
    raw signal x in 0..1.
    """

    iso: int
    shot: float
    read: float
    red_gain: float
    blue_gain: float


def sample_camera_params(rng: np.random.Generator) -> CameraNoiseParams:
    """Draws a phone camera at ISO 1000-2500 (log-uniform) with a daylight-ish white balance."""
    iso = float(np.exp(rng.uniform(*np.log(_ISO_RANGE))))
    # The analogue gain scales shot variance linearly with ISO and read variance (noise added
    # before the gain) quadratically; the jitter stands for the spread between sensors.
    gain = iso / 1600.0
    shot = _SHOT_AT_ISO_1600 * gain * float(np.exp(rng.normal(0.0, 0.1)))
    read = _READ_AT_ISO_1600 * gain**2 * float(np.exp(rng.normal(0.0, 0.25)))
    return CameraNoiseParams(
        iso=int(round(iso, -2)),
        shot=shot,
        read=read,
        red_gain=float(rng.uniform(*_RED_GAIN_RANGE)),
        blue_gain=float(rng.uniform(*_BLUE_GAIN_RANGE)),
    )


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """The exact sRGB decoding curve, on values in 0..1."""
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """The exact sRGB encoding curve, on values in 0..1."""
    # The maximum only keeps the unused branch of `where` away from negative powers.
    curve = 1.055 * np.maximum(linear, 0.0031308) ** (1 / 2.4) - 0.055
    return np.where(linear <= 0.0031308, linear * 12.92, curve)


def apply_camera_noise(
    clean: np.ndarray, params: CameraNoiseParams, rng: np.random.Generator
) -> np.ndarray:
    """Noises a clean sRGB uint8 image (H, W, 3) as a camera with `params` would have."""
    if clean.dtype != np.uint8 or clean.ndim != 3 or clean.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {clean.shape} {clean.dtype}")
    wb = np.array([params.red_gain, 1.0, params.blue_gain])
    camera_rgb = srgb_to_linear(clean / 255.0) / wb

    raw = np.empty(clean.shape[:2])
    raw[0::2, 0::2] = camera_rgb[0::2, 0::2, 0]
    raw[0::2, 1::2] = camera_rgb[0::2, 1::2, 1]
    raw[1::2, 0::2] = camera_rgb[1::2, 0::2, 1]
    raw[1::2, 1::2] = camera_rgb[1::2, 1::2, 2]
    # Gaussian with the Poisson variance: the photon counts are high enough for it to be exact
    # in practice, and it keeps the draw a single vectorised call.
    raw += rng.standard_normal(raw.shape) * np.sqrt(params.shot * raw + params.read)

    raw16 = np.round(np.clip(raw, 0.0, 1.0) * 65535.0).astype(np.uint16)
    demosaiced = cv2.cvtColor(raw16, cv2.COLOR_BayerRGGB2RGB) / 65535.0
    srgb = linear_to_srgb(np.clip(demosaiced * wb, 0.0, 1.0))
    return np.clip(np.round(srgb * 255.0), 0, 255).astype(np.uint8)


def add_camera_noise(clean: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Noises a clean sRGB uint8 image (H, W, 3) with a freshly drawn camera setting."""
    return apply_camera_noise(clean, sample_camera_params(rng), rng)
