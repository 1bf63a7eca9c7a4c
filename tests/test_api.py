"""The library API (ambsn_jax.denoise, ambsn_jax.load): any image form in, the same form out,
the command line's pixels, one compilation per shape, and silence."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

import ambsn_jax
from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT
from ambsn_jax.cli.evaluate import main as evaluate_main
from ambsn_jax.errors import UserError

H, W = 20, 24


@pytest.fixture(scope="module")
def denoiser():
    """The default weights with their default inference, loaded once."""
    return ambsn_jax.load()


def _rgb(dtype=np.uint8, seed: int = 0) -> np.ndarray:
    top = np.iinfo(dtype).max
    smooth = np.linspace(0.2, 0.8, H * W * 3).reshape(H, W, 3)
    noise = np.random.default_rng(seed).normal(0, 0.08, (H, W, 3))
    return np.round(np.clip(smooth + noise, 0, 1) * top).astype(dtype)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_rgb_gray_and_rgba_keep_their_shape_and_dtype(denoiser, dtype):
    rgb = _rgb(dtype)
    out = denoiser(rgb)
    assert out.shape == rgb.shape and out.dtype == dtype
    # It denoises: closer to the smooth image than the noisy input is.
    smooth = np.linspace(0.2, 0.8, H * W * 3).reshape(H, W, 3) * np.iinfo(dtype).max
    assert np.abs(out - smooth).mean() < 0.7 * np.abs(rgb - smooth).mean()
    # RGBA: the colour is denoised as RGB, the alpha comes back untouched.
    alpha = np.random.default_rng(1).integers(0, np.iinfo(dtype).max, (H, W), dtype=dtype)
    rgba = denoiser(np.dstack([rgb, alpha]))
    assert rgba.shape == (H, W, 4) and rgba.dtype == dtype
    np.testing.assert_array_equal(rgba[..., :3], out)
    np.testing.assert_array_equal(rgba[..., 3], alpha)
    gray = denoiser(rgb[..., 1])
    assert gray.shape == (H, W) and gray.dtype == dtype
    # Gray goes through as three equal channels, averaged back: a gray image's result is the
    # mean of its channels' results (integers: within the rounding).
    three = denoiser(np.dstack([rgb[..., 1]] * 3))
    assert np.abs(gray.astype(np.float64) - three.astype(np.float64).mean(axis=2)).max() <= 1.0


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_floats_in_0_1_and_0_255(denoiser, dtype):
    u16 = _rgb(np.uint16)
    unit = (u16 / 65535.0).astype(dtype)
    out = denoiser(unit)
    assert out.shape == unit.shape and out.dtype == dtype and 0 <= out.min() and out.max() <= 1
    # The same network input as the uint16 image: the float result is its unrounded value.
    assert np.abs(out.astype(np.float64) * 65535 - denoiser(u16)).max() <= 0.5 + 1e-2
    wide = (unit.astype(np.float64) * 255).astype(dtype)
    out255 = denoiser(wide, float_max=255)
    assert out255.dtype == dtype and out255.max() > 1
    np.testing.assert_allclose(out255 / 255, out, rtol=0, atol=1e-5)
    gray = denoiser(unit[..., 0])
    assert gray.shape == (H, W) and gray.dtype == dtype
    np.testing.assert_allclose(gray, denoiser(np.dstack([unit[..., 0]] * 3)).mean(axis=2), rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    "image, kwargs, message",
    [
        (np.full((4, 4, 3), 1.5, np.float32), {}, "the float array spans 1.5..1.5, not 0..1 (values above 1: pass float_max=255"),
        (np.full((4, 4, 3), -0.1, np.float32), {}, "the float array spans -0.1..-0.1, not 0..1"),
        (np.full((4, 4, 3), 300.0), {"float_max": 255}, "spans 300..300, not 0..255"),
        (np.full((4, 4, 3), np.nan), {}, "not 0..1"),
        (np.zeros((4, 4, 3)), {"float_max": 100}, "float_max=100: must be 1"),
        (np.zeros((4, 4, 3), np.int32), {}, "the array is int32; pass uint8, uint16 or float"),
        (np.zeros((4, 4, 2), np.uint8), {}, "shape (4, 4, 2) is not a gray (H, W) or colour (H, W, 3|4) image"),
    ],
)
def test_what_is_no_image_is_refused_clearly(denoiser, image, kwargs, message):
    with pytest.raises(UserError) as error:
        denoiser(image, **kwargs)
    assert message in str(error.value)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_denoise_gives_the_pixels_the_command_line_writes(dtype, tmp_path, capsys):
    rgb = _rgb(dtype, seed=2)
    png = tmp_path / "in.png"
    assert cv2.imwrite(str(png), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    assert evaluate_main(["--input", str(png), "--output", str(tmp_path / "out"), "--seed", "3"]) == 0
    capsys.readouterr()
    written = cv2.cvtColor(cv2.imread(str(tmp_path / "out" / "in.png"), cv2.IMREAD_UNCHANGED), cv2.COLOR_BGR2RGB)
    got = ambsn_jax.denoise(rgb, seed=3)  # the default weights and inference, as the command's
    assert got.dtype == written.dtype == dtype
    np.testing.assert_array_equal(got, written)
    # R3's draws follow the seed (the demo AM-BSN: the default student has nothing random).
    assert not np.array_equal(ambsn_jax.denoise(rgb, DEMO_CHECKPOINT, seed=3), ambsn_jax.denoise(rgb, DEMO_CHECKPOINT, seed=4))


def test_a_student_denoises_in_one_pass_of_its_network(student_ckpt):
    from ambsn_jax.checkpoint.store import load_checkpoint
    from ambsn_jax.inference.release import postprocess

    rgb = _rgb(np.uint8, seed=5)
    got = ambsn_jax.denoise(rgb, student_ckpt, seed=1)
    want = postprocess(load_checkpoint(student_ckpt).module()(rgb[None].astype(np.float32)))[0]
    assert got.dtype == np.uint8 and got.shape == rgb.shape
    np.testing.assert_array_equal(got, np.asarray(want).astype(np.uint8))
    np.testing.assert_array_equal(got, ambsn_jax.denoise(rgb, student_ckpt, seed=2))  # nothing random in it


def test_loaded_denoiser_compiles_once_per_shape(denoiser):
    rgb = _rgb(np.uint8, seed=5)
    first = denoiser(rgb, seed=1)
    again = denoiser(rgb, seed=1)
    np.testing.assert_array_equal(first, again)
    fn = getattr(denoiser._denoiser, "_fn", None)
    if hasattr(fn, "_cache_size"):
        before = fn._cache_size()
        denoiser(_rgb(np.uint8, seed=6), seed=2)
        assert fn._cache_size() == before  # same shape: no new program


def test_the_default_weights_come_with_their_metadata_s_self_ensemble(denoiser):
    assert denoiser.checkpoint.meta.self_ensemble == denoiser.cfg.self_ensemble == 4
    assert ambsn_jax.load(self_ensemble=False).cfg.self_ensemble == 1
    assert ambsn_jax.load(self_ensemble=2).cfg.self_ensemble == 2


def test_load_and_denoise_say_nothing(capfd):
    capfd.readouterr()
    dn = ambsn_jax.load(tta=False, r3=False)
    out = dn(_rgb(np.uint8))
    assert out.shape == (H, W, 3) and dn.cfg.tta is False and dn.cfg.r3 is False
    assert capfd.readouterr() == ("", "")


def test_a_batch_gives_each_image_its_own_call_s_pixels(denoiser):
    a, b = _rgb(np.uint8, seed=7), _rgb(np.uint8, seed=8)
    together = denoiser.batch([a, b], seeds=[1, 2], indices=[0, 3])
    np.testing.assert_array_equal(together[0], denoiser(a, seed=1, index=0))
    np.testing.assert_array_equal(together[1], denoiser(b, seed=2, index=3))  # R3 draws: its own seed and index
    with pytest.raises(ValueError, match="one shape and dtype"):
        denoiser.batch([a, a[:10]], seeds=[0, 0], indices=[0, 0])
