"""The two SSIM conventions and the HTML evaluation report (`--report`)."""

from __future__ import annotations

import html
import json
import re
from pathlib import Path
from urllib.parse import unquote

import cv2
import numpy as np
import pytest
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ambsn_jax.data.images import read_pixels, write_pixels
from ambsn_jax.errors import UserError
from ambsn_jax.cli import evaluate as cli
from ambsn_jax.evaluation import report
from ambsn_jax.metrics import psnr, ssim, ssim_gaussian

FAST = ["--no-tta", "--no-r3"]
NASTY = "<b>&\"o'k\" é.png"  # markup, quotes, ampersand, a space and non-ASCII in one name


def _noisy_pair(rng: np.random.Generator, shape=(32, 28, 3), sigma=25.0) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    clean = np.clip(80 + 3 * yy[..., None] + 2 * xx[..., None] + rng.uniform(0, 30, (1, 1, 3)), 0, 255)
    noisy = np.clip(clean + rng.normal(0, sigma, shape), 0, 255)
    return clean.astype(np.uint8), noisy.astype(np.uint8)


def _html(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _sources(text: str) -> list[str]:
    return re.findall(r'<img[^>]* src="([^"]+)"', text)


# --- SSIM conventions -------------------------------------------------------------------------


def test_ssim_gaussian_is_skimages_wang_et_al_setting(rng):
    clean, noisy = _noisy_pair(rng)
    c, n = clean.astype(np.float32), noisy.astype(np.float32)
    want = structural_similarity(
        c, n, channel_axis=2, data_range=255, gaussian_weights=True, sigma=1.5, use_sample_covariance=False
    )
    assert ssim_gaussian(clean, noisy) == want
    assert ssim(clean, noisy) == structural_similarity(c, n, channel_axis=2, data_range=255)
    # Two conventions, two numbers: on a noisy block they differ well beyond rounding.
    assert abs(ssim(clean, noisy) - ssim_gaussian(clean, noisy)) > 0.005
    assert ssim_gaussian(clean, clean) == pytest.approx(1.0)


# --- validation report ------------------------------------------------------------------------


@pytest.fixture
def scored(rng):
    """Five blocks of 12 x 10 with made-up denoised PSNRs: gains then order them 3, 0, 4, 1, 2."""
    pairs = [_noisy_pair(rng, (12, 10, 3), sigma) for sigma in (10, 20, 30, 15, 25)]
    clean = np.stack([c for c, _ in pairs])
    noisy = np.stack([n for _, n in pairs])
    denoised = np.clip(clean.astype(np.int16) + rng.integers(-6, 7, clean.shape), 0, 255).astype(np.uint8)
    noisy_psnr = np.array([psnr(c, n) for c, n in zip(clean, noisy)])
    gains = np.array([5.0, 2.0, 1.0, 9.0, 3.0])
    blocks = [
        {"image": n // 3, "block": n % 3, "psnr": float(noisy_psnr[n] + gains[n]), "ssim": 0.5 + n / 100,
         "ssim_gaussian": 0.6 + n / 100}
        for n in range(5)
    ]  # fmt: skip
    summary = {
        "psnr": 31.2345, "ssim": 0.8765, "ssim_gaussian": 0.8899,
        "noisy_psnr": 25.4321, "noisy_ssim": 0.5012, "noisy_ssim_gaussian": 0.5123,
        "options": {"seed": 7, "dataset": "<script>alert(1)</script>"},
        "checkpoint": {"path": "/ck & <pt>", "sha256": "ab" * 32},
    }  # fmt: skip
    return summary, blocks, noisy, denoised, clean


def test_validation_report_holds_scores_table_histogram_and_featured_blocks(scored, tmp_path):
    summary, blocks, noisy, denoised, clean = scored
    page = report.write_validation_report(tmp_path / "rep", summary, blocks, noisy, denoised, clean)
    assert page == tmp_path / "rep" / "index.html"
    text = _html(page)

    for value in ("31.23", "0.8765", "0.8899", "25.43", "0.5012", "0.5123", "+5.80", "ab" * 32):
        assert value in text
    assert "http" not in text.replace('xmlns="http://www.w3.org/2000/svg"', "")  # nothing fetched
    table = text[text.index('<table id="blocks"') :]
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", table[table.index("<tbody>") : table.index("</tbody>")])
    assert len(rows) == 5
    # The gain column is denoised minus noisy PSNR, the noisy PSNR computed from the arrays.
    first = re.findall(r'data-v="([^"]+)"', rows[0])
    want_noisy = peak_signal_noise_ratio(clean[0].astype(np.float32), noisy[0].astype(np.float32), data_range=255)
    assert float(first[4]) == pytest.approx(want_noisy) and float(first[5]) == pytest.approx(5.0)

    svg = text[text.index('<svg id="gain-histogram"') : text.index("</svg>")]
    counts = [int(c) for c in re.findall(r"dB: (\d+) block\(s\)</title>", svg)]
    assert sum(counts) == 5 and len(counts) == 5

    featured = {m[0]: int(m[1]) for m in re.findall(r'data-rank="(\w+)" data-index="(\d+)"', text)}
    assert featured == {"best": 3, "median": 4, "worst": 2}  # gains 9, 3 (middle of 5), 1
    assert "best: image 1, block 0" in text and "worst: image 0, block 2" in text
    assert "x 4, clipped at 255" in text and "image-rendering: pixelated" in text

    sources = _sources(text)
    assert len(sources) == 12 and all(s.startswith("img/") for s in sources)
    for source in sources:
        pixels = read_pixels(page.parent / source)
        assert pixels.shape == (24, 20, 3)  # 2x of 12 x 10
        n, kind = re.fullmatch(r"img/block(\d)_(\w+)\.png", source).groups()
        rgb = cv2.cvtColor(pixels, cv2.COLOR_BGR2RGB)
        assert (rgb[::2, ::2] == rgb[1::2, 1::2]).all()  # nearest neighbour: 2x2 copies
        n = int(n)
        error = np.clip(np.abs(denoised[n].astype(np.int16) - clean[n]) * 4, 0, 255)
        want = {"noisy": noisy[n], "denoised": denoised[n], "clean": clean[n], "error": error}[kind]
        np.testing.assert_array_equal(rgb[::2, ::2], want)

    # User strings are escaped: no raw markup from the options or the checkpoint path.
    assert "<script>alert(1)</script>" not in text and "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "/ck &amp; &lt;pt&gt;" in text


def test_few_blocks_share_the_featured_labels(scored, tmp_path):
    summary, blocks, noisy, denoised, clean = scored
    page = report.write_validation_report(tmp_path / "r", summary, blocks[:2], noisy[:2], denoised[:2], clean[:2])
    text = _html(page)
    featured = re.findall(r'data-rank="([\w /]+)" data-index="(\d+)"', text)
    assert featured == [("best", "0"), ("median / worst", "1")]
    assert len(_sources(text)) == 8


def test_report_folder_replaces_only_a_previous_report(scored, tmp_path):
    summary, blocks, noisy, denoised, clean = scored
    target = tmp_path / "rep"
    report.write_validation_report(target, summary, blocks, noisy, denoised, clean)
    (target / "img" / "stale.png").write_bytes(b"x")
    report.write_validation_report(target, {**summary, "psnr": 40.0}, blocks, noisy, denoised, clean)
    assert not (target / "img" / "stale.png").exists() and "40.00" in _html(target / "index.html")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rep"]  # no temporary folders left

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"keep")
    with pytest.raises(UserError, match="not a previous report"):
        report.write_validation_report(mine, summary, blocks, noisy, denoised, clean)
    assert [p.name for p in mine.iterdir()] == ["holiday.jpg"]
    with pytest.raises(UserError, match="would replace"):
        report.check_out_dir(tmp_path, keep=[mine / "holiday.jpg"])
    (tmp_path / "empty").mkdir()
    report.check_out_dir(tmp_path / "empty")  # an empty folder is fine


# --- folder report ----------------------------------------------------------------------------


def _write_rgb(path: Path, rgb: np.ndarray) -> None:
    write_pixels(path, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))


def test_folder_report_thumbnails_link_to_full_size_files_and_escape_names(rng, tmp_path):
    clean, noisy = _noisy_pair(rng, (300, 400, 3))
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    pairs = []
    for name, size in ((NASTY, (300, 400)), ("small.png", (40, 30))):
        src, dst = tmp_path / "in" / name, tmp_path / "out" / name
        _write_rgb(src, noisy[: size[0], : size[1]])
        _write_rgb(dst, clean[: size[0], : size[1]])
        pairs.append((name, src, dst))
    pairs.append(("gone.png", tmp_path / "in" / "gone.png", tmp_path / "out" / "gone.png"))
    page = report.write_folder_report(tmp_path / "rep", pairs, {"input": str(tmp_path / "in"), "name": NASTY})
    text = _html(page)

    assert NASTY not in text and html.escape(NASTY, quote=True) in text
    assert "<b>" not in text
    sources = _sources(text)
    assert sources == ["img/0000_noisy.jpg", "img/0000_denoised.jpg", "img/0001_noisy.jpg", "img/0001_denoised.jpg"]
    sizes = [read_pixels(page.parent / s).shape[:2] for s in sources]
    assert sizes == [(192, 256), (192, 256), (40, 30), (40, 30)]  # longest side 256, small ones as they are
    links = [unquote(html.unescape(h)) for h in re.findall(r'<a href="([^"]+)"><img', text)]
    assert [(page.parent / link).resolve() for link in links] == [
        p.resolve() for _, src, dst in pairs[:2] for p in (src, dst)
    ]
    assert text.count('class="missing"') == 2 and "gone.png: cannot read it" in text


# --- command line -----------------------------------------------------------------------------


def test_cli_report_on_demo_blocks(tmp_path, capsys):
    out = tmp_path / "rep"
    code = cli.main([*FAST, "--limit", "2", "--json", str(tmp_path / "r.json"), "--report", str(out)])
    assert code == 0, capsys.readouterr().err
    rep = json.loads((tmp_path / "r.json").read_text())
    assert set(rep["ssim_conventions"]) == {"ssim", "ssim_gaussian", "ssim_y"} and "denoised" not in rep
    assert rep["ssim_gaussian"] == pytest.approx(np.mean([b["ssim_gaussian"] for b in rep["blocks"]]))
    assert abs(rep["noisy_ssim"] - rep["noisy_ssim_gaussian"]) > 0.005  # two conventions, two numbers

    text = _html(out / "index.html")
    assert f"{rep['psnr']:.2f}" in text and f"{rep['noisy_ssim_gaussian']:.4f}" in text
    # Both blocks are shown; the images are the very blocks that were scored.
    for n, block in enumerate(rep["blocks"]):
        clean = cv2.cvtColor(read_pixels(out / f"img/block{n}_clean.png"), cv2.COLOR_BGR2RGB)[::2, ::2]
        denoised = cv2.cvtColor(read_pixels(out / f"img/block{n}_denoised.png"), cv2.COLOR_BGR2RGB)[::2, ::2]
        assert psnr(clean, denoised) == block["psnr"] and ssim_gaussian(clean, denoised) == block["ssim_gaussian"]


def test_cli_report_on_an_image_folder_and_its_refusals(rng, tmp_path, capsys):
    (tmp_path / "in").mkdir()
    for i in range(2):
        _write_rgb(tmp_path / "in" / f"im{i}.png", _noisy_pair(rng, (24, 20, 3))[1])
    args = ["--input", str(tmp_path / "in"), "--output", str(tmp_path / "out"), *FAST]
    assert cli.main([*args, "--report", str(tmp_path / "rep")]) == 0
    text = _html(tmp_path / "rep" / "index.html")
    assert _sources(text) == [f"img/000{i}_{k}.jpg" for i in range(2) for k in ("noisy", "denoised")]
    assert "../out/im1.png" in text and "Summary: 2 images" in text

    capsys.readouterr()
    assert cli.main([*args, "--report", str(tmp_path / "out")]) == 2
    assert "would replace" in capsys.readouterr().err
    assert cli.main(["--sidd-bench", str(tmp_path), "--submission", "s.csv", "--report", str(tmp_path / "r2")]) == 2
    assert "--report applies to validation" in capsys.readouterr().err
