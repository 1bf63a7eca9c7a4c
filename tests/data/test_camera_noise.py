"""Synthetic camera noise (ambsn_jax.data.camera_noise): a phone's pipeline, its noise statistics."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import skimage.data

from ambsn_jax.data.camera_noise import (
    CameraNoiseParams,
    add_camera_noise,
    apply_camera_noise,
    sample_camera_params,
)
from tests.helpers import neighbour_correlation, psnr_u8


@pytest.fixture(scope="module")
def phone_photo() -> np.ndarray:
    """A smooth RGB uint8 photo, like the demo's: a crop of astronaut upscaled 3x."""
    crop = skimage.data.astronaut()[100:228, 150:278]
    return cv2.resize(crop, None, fx=3, fy=3, interpolation=cv2.INTER_CUBIC)


# --- camera noise -------------------------------------------------------------------------


def test_pipeline_without_noise_gives_back_the_photo(phone_photo):
    # Catches a wrong Bayer code, a swapped white balance or a wrong sRGB curve: each of those
    # shifts colours by far more than the demosaic's interpolation error.
    silent = CameraNoiseParams(iso=1600, shot=0.0, read=0.0, red_gain=2.2, blue_gain=1.7)
    out = apply_camera_noise(phone_photo, silent, np.random.default_rng(0))
    assert out.shape == phone_photo.shape and out.dtype == np.uint8
    assert psnr_u8(phone_photo, out) > 38
    channel_means = out.reshape(-1, 3).mean(0) - phone_photo.reshape(-1, 3).mean(0)
    assert np.abs(channel_means).max() < 1.0


def test_noise_is_spatially_correlated(phone_photo):
    noisy = add_camera_noise(phone_photo, np.random.default_rng(1))
    assert neighbour_correlation(noisy, phone_photo) >= 0.3
    # The measure itself: independent noise shows no correlation.
    white = phone_photo + np.random.default_rng(1).normal(0, 10, phone_photo.shape)
    assert abs(neighbour_correlation(white, phone_photo)) < 0.05


def test_noise_is_deterministic_per_generator(phone_photo):
    first = add_camera_noise(phone_photo, np.random.default_rng(7))
    again = add_camera_noise(phone_photo, np.random.default_rng(7))
    other = add_camera_noise(phone_photo, np.random.default_rng(8))
    assert first.tobytes() == again.tobytes()
    assert first.tobytes() != other.tobytes()


def test_noisy_psnr_is_that_of_a_phone(phone_photo):
    noisy = [add_camera_noise(phone_photo, np.random.default_rng(seed)) for seed in range(8)]
    values = [psnr_u8(phone_photo, n) for n in noisy]
    assert 25 <= np.mean(values) <= 30
    assert 23.5 <= min(values) and max(values) <= 31.5


def test_sampled_parameters_stay_in_range():
    for seed in range(50):
        p = sample_camera_params(np.random.default_rng(seed))
        assert 1000 <= p.iso <= 2500
        assert 1.9 <= p.red_gain <= 2.4 and 1.5 <= p.blue_gain <= 1.9
        assert p.shot > 0 and p.read > 0


def test_noise_on_odd_sizes_and_bad_input():
    odd = np.random.default_rng(0).integers(0, 256, (33, 47, 3), dtype=np.uint8)
    assert add_camera_noise(odd, np.random.default_rng(0)).shape == (33, 47, 3)
    with pytest.raises(ValueError):
        add_camera_noise(odd.astype(np.float32), np.random.default_rng(0))
