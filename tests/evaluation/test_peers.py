"""The classical peers (ambsn_jax.evaluation.peers) and bench/peers.py's run on tiny blocks:
the PSD estimate's scale, the peers' gains on correlated noise, the table's JSON and figure."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from ambsn_jax.evaluation import peers
from ambsn_jax.metrics import psnr
from tests.helpers import SIDD_SHAPE

BENCH = Path(__file__).resolve().parents[2] / "bench" / "peers.py"


def correlated(seed: int, side: int = 32, sigma: float = 12.0) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) uint8 (side, side, 3): a smooth gradient, noise blurred like a demosaic's."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:side, :side]
    clean = np.clip(np.dstack([60 + 3 * yy, 90 + 2 * xx, 150 - yy - xx]), 0, 255).astype(np.uint8)
    noise = cv2.GaussianBlur(rng.normal(0, 1, (side, side, 3)), (0, 0), 0.7)
    noise *= sigma / noise.std()
    return np.clip(clean + noise, 0, 255).astype(np.uint8), clean


def test_psd_of_white_noise_is_its_variance_times_the_pixel_count():
    rng = np.random.default_rng(0)
    noise = rng.normal(0.5, 0.05, (64, 64, 3))
    psd = peers.estimate_psd(noise) / (64 * 64 * 0.05**2)
    assert psd.shape == noise.shape
    assert 0.85 < psd.mean() < 1.05
    # The residual is high-passed: the variance shows at high frequencies, not near DC.
    assert 0.8 < psd[16, 16].mean() < 1.2 and 0.8 < psd[32, 32].mean() < 1.2 and psd[0, 0].mean() < 0.1
    # Noise blurred like a demosaic's: power at low frequencies, next to none at the highest.
    blurred = peers.estimate_psd(cv2.GaussianBlur(noise, (0, 0), 1.0))
    assert blurred[8, 8].mean() > 100 * blurred[32, 32].mean()


def test_timing_image_tiles_the_blocks_to_the_side():
    blocks = np.arange(4 * 8 * 6 * 3, dtype=np.uint8).reshape(4, 8, 6, 3)
    image = peers.timing_image(blocks, 20)
    assert image.shape == (20, 20, 3)
    np.testing.assert_array_equal(image[:8, :6], blocks[0])
    np.testing.assert_array_equal(image[8:16, 6:12], blocks[3])
    np.testing.assert_array_equal(image[16:20, :6], blocks[0][:4])


def test_rounded_is_the_releases_rounding():
    np.testing.assert_array_equal(peers.rounded(np.array([-3.0, 0.49, 0.5, 254.5, 300.0])), [0, 0, 1, 255, 255])


def test_nl_means_gains_on_correlated_noise():
    noisy, clean = correlated(0)
    out = peers.denoise_each(peers.nl_means, noisy[None])
    assert psnr(clean, out[0]) > psnr(clean, noisy) + 2.0


def test_bm3d_psd_gains_on_correlated_noise():
    pytest.importorskip("bm3d", reason="BM3D is the optional extra .[peers] (.ci/run installs it)")
    noisy, clean = correlated(1)
    out = peers.rounded(peers.bm3d_psd(noisy))
    assert psnr(clean, out) > psnr(clean, noisy) + 3.0


@pytest.fixture
def bench_peers():
    spec = importlib.util.spec_from_file_location("bench_peers", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_peers_table_json_and_figure(bench_peers, val_dir, tmp_path, capsys):
    out, fig = tmp_path / "peers.json", tmp_path / "fig.png"
    argv = ["--sidd-val", str(val_dir), "--peers", "nlm,n2v,student"]
    assert bench_peers.main([*argv, "--limit", "2", "--repeats", "1", "--json", str(out), "--figure", str(fig)]) == 0
    rows = {r["peer"]: r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {"noisy", "nlm", "n2v", "student"}
    assert "not run" in rows["n2v"]["status"]
    assert len(rows["nlm"]["block_psnr"]) == 2 and rows["nlm"]["psnr"] > rows["noisy"]["psnr"] + 1.0
    for name in ("nlm", "student"):
        row = rows[name]
        assert 0 < row["ssim"] <= 1 and 0 < row["ssim_gaussian"] <= 1 and row["s_per_block"] > 0
    assert f"| nlm | {rows['nlm']['psnr']:.2f} |" in capsys.readouterr().out
    image = cv2.imread(str(fig))
    # noisy, student, clean (the columns present) of two blocks, zoomed, under a band of names
    h, w = SIDD_SHAPE[2:4]
    assert image.shape == (18 + 2 * 2 * h, 3 * 2 * w, 3)
