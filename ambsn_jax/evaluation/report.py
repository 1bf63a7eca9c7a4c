"""A visual evaluation report: one self-contained HTML page with its images beside it.

`write_validation_report` shows SIDD-style validation scores (summary, sortable per-block table,
histogram of PSNR gains, the best / median / worst blocks enlarged); `write_folder_report` shows
the before / after of denoised image files. The page needs no network: CSS, JavaScript and the
histogram (SVG) are inline, the images are PNG / JPEG files under `DIR/img/`.

A report folder is built in a temporary folder beside it and renamed into place when complete.
An existing `DIR` is replaced only if it is empty or a previous report (it holds the `MARKER`
file this module writes); anything else is refused, so that `--report` can never delete
someone's files.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import quote

import cv2
import numpy as np

from ambsn_jax.data.images import read_image, write_pixels
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation.html_page import escape, histogram_svg, key_values, page
from ambsn_jax.files import atomic_dir
from ambsn_jax.metrics import psnr

MARKER = ".ambsn-report"
ZOOM = 2  # the featured blocks' enlargement, nearest neighbour: pixels stay visible as pixels
ERROR_GAIN = 4  # |denoised - clean| is amplified this much (then clipped) to be visible at all
THUMB_SIDE = 256  # longest side of the folder report's thumbnails


# --- the report folder ----------------------------------------------------------------------


def check_out_dir(out_dir: str | Path, keep: Sequence[str | Path] = ()) -> None:
    """Refuses `out_dir` unless it is absent, empty or a previous report, and holds none of `keep`.

    Called before the work, so that a refusal costs nothing; `keep` names paths (inputs,
    outputs) that replacing the folder must not delete.
    """
    out_dir = Path(out_dir)
    target = out_dir.resolve()
    for path in keep:
        path = Path(path).resolve()
        if path == target or target in path.parents:
            raise UserError(f"{out_dir}: the report would replace {path}; pick another --report folder")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"{out_dir}: exists and is not a folder; pick another --report folder")
    if out_dir.is_dir() and any(out_dir.iterdir()) and not (out_dir / MARKER).is_file():
        raise UserError(
            f"{out_dir}: a non-empty folder that is not a previous report; pick an empty or new --report folder"
        )


@contextmanager
def _report_dir(out_dir: Path) -> Iterator[Path]:
    """A temporary folder beside `out_dir` to write into; swapped onto `out_dir` once complete."""
    check_out_dir(out_dir)
    with atomic_dir(out_dir, replace=True) as tmp:
        (tmp / "img").mkdir()
        (tmp / MARKER).write_text("written by ambsn_jax.evaluation.report; replaced by the next report here\n")
        yield tmp


def _write_rgb(path: Path, rgb: np.ndarray, zoom: int = 1) -> None:
    if zoom != 1:
        rgb = cv2.resize(rgb, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_NEAREST)
    write_pixels(path, cv2.cvtColor(np.ascontiguousarray(rgb), cv2.COLOR_RGB2BGR))


# --- page parts -----------------------------------------------------------------------------

def _featured(gains: np.ndarray) -> list[tuple[str, int]]:
    """(label, index) of the best, median and worst gains; one entry per block, labels joined.

    The median of an even count is the lower of the middle two.
    """
    order = np.argsort(-gains, kind="stable")
    picks: dict[int, list[str]] = {}
    for label, index in (("best", order[0]), ("median", order[len(order) // 2]), ("worst", order[-1])):
        picks.setdefault(int(index), []).append(label)
    return [(" / ".join(labels), index) for index, labels in picks.items()]


# --- validation -----------------------------------------------------------------------------


def _check_blocks(blocks: Sequence[Mapping[str, Any]], *arrays: np.ndarray) -> None:
    for a in arrays:
        if a.dtype != np.uint8 or a.ndim != 4 or a.shape[3] != 3 or a.shape != arrays[0].shape:
            raise ValueError(f"expected uint8 blocks (N, H, W, 3) of one shape, got {a.dtype} {a.shape}")
    if len(blocks) != len(arrays[0]) or not blocks:
        raise ValueError(f"{len(blocks)} score dicts for {len(arrays[0])} blocks")


def write_validation_report(
    out_dir: str | Path,
    summary: Mapping[str, Any],
    blocks: Sequence[Mapping[str, Any]],
    noisy: np.ndarray,
    denoised: np.ndarray,
    clean: np.ndarray,
) -> Path:
    """Writes `out_dir/index.html` for scored validation blocks; returns the page's path.

    `summary`: the JSON report without its blocks (means `psnr`, `ssim`, `ssim_gaussian`,
    `noisy_*`, and `options`, `checkpoint`, anything else shown as key / value tables).
    `blocks`: one score dict per block ({image, block, psnr, ssim, ssim_gaussian}; a missing
    `noisy_psnr` is computed from the arrays). `noisy`, `denoised`, `clean`: the scored blocks,
    uint8 (N, H, W, 3) in the order of `blocks`. The per-block gain is psnr - noisy_psnr; the
    best, median and worst blocks by gain are shown enlarged, with their amplified error.
    """
    _check_blocks(blocks, noisy, denoised, clean)
    noisy_psnr = np.array(
        [b["noisy_psnr"] if "noisy_psnr" in b else psnr(c, x) for b, c, x in zip(blocks, clean, noisy)]
    )
    gains = np.array([b["psnr"] for b in blocks]) - noisy_psnr
    featured = _featured(gains)
    out_dir = Path(out_dir)
    with _report_dir(out_dir) as tmp:
        figures = []
        for label, n in featured:
            error = np.clip(np.abs(denoised[n].astype(np.int16) - clean[n]) * ERROR_GAIN, 0, 255).astype(np.uint8)
            cells = []
            for kind, rgb in (("noisy", noisy[n]), ("denoised", denoised[n]), ("clean", clean[n]), ("error", error)):
                name = f"img/block{n}_{kind}.png"
                _write_rgb(tmp / name, rgb, ZOOM)
                caption = f"|denoised - clean| x {ERROR_GAIN}, clipped at 255" if kind == "error" else kind
                h, w = rgb.shape[:2]
                cells.append(
                    f'<figure><img class="zoom" src="{name}" width="{w * ZOOM}" height="{h * ZOOM}" '
                    f'alt="{escape(kind)}"><figcaption>{escape(caption)}</figcaption></figure>'
                )
            b = blocks[n]
            figures.append(
                f'<section class="featured" data-rank="{escape(label)}" data-index="{n}" data-image="{escape(b["image"])}" '
                f'data-block="{escape(b["block"])}"><h3>{escape(label)}: image {escape(b["image"])}, block {escape(b["block"])} '
                f"(PSNR {b['psnr']:.2f} dB, gain {gains[n]:+.2f} dB)</h3>"
                f'<div class="row">{"".join(cells)}</div></section>'
            )
        (tmp / "index.html").write_text(
            page("AM-BSN validation report", _validation_body(summary, blocks, noisy_psnr, gains, featured, figures)),
            encoding="utf-8",
        )
    return out_dir / "index.html"


def _validation_body(
    summary: Mapping[str, Any],
    blocks: Sequence[Mapping[str, Any]],
    noisy_psnr: np.ndarray,
    gains: np.ndarray,
    featured: list[tuple[str, int]],
    figures: list[str],
) -> str:
    means = [
        ("PSNR (dB)", "psnr", "noisy_psnr", ".2f"),
        ("SSIM, release: 7x7 uniform window", "ssim", "noisy_ssim", ".4f"),
        ("SSIM, Gaussian (Wang et al.)", "ssim_gaussian", "noisy_ssim_gaussian", ".4f"),
    ]
    mean_rows = "".join(
        f'<tr><td>{escape(name)}</td><td data-key="{key}">{summary[key]:{fmt}}</td><td>{summary[noisy]:{fmt}}</td>'
        f"<td>{summary[key] - summary[noisy]:+{fmt}}</td></tr>"
        for name, key, noisy, fmt in means
        if key in summary and noisy in summary
    )
    rest = {k: v for k, v in summary.items() if k not in {m[1] for m in means} | {m[2] for m in means}}
    labels = {n: label for label, n in featured}
    rows = []
    for n, b in enumerate(blocks):
        cls = ' class="featured"' if n in labels else ""
        cells = [
            (n, f"{n}"), (b["image"], f"{b['image']}"), (b["block"], f"{b['block']}"),
            (b["psnr"], f"{b['psnr']:.2f}"), (noisy_psnr[n], f"{noisy_psnr[n]:.2f}"), (gains[n], f"{gains[n]:+.2f}"),
            (b["ssim"], f"{b['ssim']:.4f}"), (b["ssim_gaussian"], f"{b['ssim_gaussian']:.4f}"),
        ]  # fmt: skip
        tds = "".join(f'<td data-v="{float(v)!r}">{escape(text)}</td>' for v, text in cells)
        rows.append(f'<tr{cls}>{tds}<td class="text">{escape(labels.get(n, ""))}</td></tr>')
    heads = ["#", "image", "block", "PSNR", "noisy PSNR", "gain (dB)", "SSIM", "SSIM Gaussian"]
    head = "".join(f"<th>{h}</th>" for h in heads) + '<th class="text">shown</th>'
    return (
        f"<h2>Summary: {len(blocks)} blocks</h2>"
        '<table class="means"><thead><tr><th class="text">mean over blocks</th><th>denoised</th><th>noisy input</th>'
        f"<th>gain</th></tr></thead><tbody>{mean_rows}</tbody></table>"
        f"{key_values(rest)}"
        f"<h2>Per-block PSNR gain</h2>{histogram_svg(gains)}"
        f"<h2>Best, median and worst blocks by PSNR gain ({ZOOM}x, nearest neighbour)</h2>{''.join(figures)}"
        '<h2>Blocks</h2><p class="note">Click a column header to sort by it; click again to reverse.</p>'
        f'<table id="blocks" class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


# --- image folders --------------------------------------------------------------------------


def _thumbnail(source: Path, target: Path) -> None:
    image, _ = read_image(source)  # any depth, gray or RGBA, upright: as the denoiser saw it
    rgb = np.clip(np.floor(image + 0.5), 0, 255).astype(np.uint8)
    scale = THUMB_SIDE / max(rgb.shape[:2])
    if scale < 1:
        size = (max(1, round(rgb.shape[1] * scale)), max(1, round(rgb.shape[0] * scale)))
        rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
    _write_rgb(target, rgb)


def _href(path: Path, page_dir: Path) -> str:
    """A link from the page to `path`: relative (the report can move with the files), quoted."""
    try:
        rel = Path(os.path.relpath(path.resolve(), page_dir.resolve())).as_posix()
    except ValueError:  # another drive on Windows: no relative path exists
        return escape(path.resolve().as_uri())
    return escape(quote(rel))


def write_folder_report(
    out_dir: str | Path,
    pairs: Sequence[tuple[str, str | Path, str | Path]],
    summary: Mapping[str, Any],
) -> Path:
    """Writes `out_dir/index.html`: a thumbnail before / after of each (name, noisy, denoised).

    Thumbnails (JPEG, longest side `THUMB_SIDE`) are written under `out_dir/img/`; each links to
    its full-size file where it lies, by a path relative to `out_dir`. `summary` (options,
    checkpoint, ...) is shown as key / value tables. An image that cannot be read is listed with
    the reason instead of thumbnails. Returns the page's path.
    """
    out_dir = Path(out_dir)
    with _report_dir(out_dir) as tmp:
        items = []
        for i, (name, noisy_path, denoised_path) in enumerate(pairs):
            cells = []
            for kind, path in (("noisy", Path(noisy_path)), ("denoised", Path(denoised_path))):
                thumb = f"img/{i:04d}_{kind}.jpg"
                try:
                    _thumbnail(path, tmp / thumb)
                except UserError as e:
                    cells.append(f'<figure class="missing"><figcaption>{escape(kind)}: {escape(e)}</figcaption></figure>')
                    continue
                cells.append(
                    f'<figure><a href="{_href(path, out_dir)}"><img src="{thumb}" alt="{escape(kind)} {escape(name)}"></a>'
                    f"<figcaption>{escape(kind)}: {escape(path.name)}</figcaption></figure>"
                )
            items.append(f'<section class="pair"><h3>{escape(name)}</h3><div class="row">{"".join(cells)}</div></section>')
        body = (
            f"<h2>Summary: {len(pairs)} images</h2>{key_values(summary)}"
            '<h2>Before / after</h2><p class="note">Click a thumbnail for the full-size image.</p>'
            f"{''.join(items)}"
        )
        (tmp / "index.html").write_text(page("AM-BSN denoising report", body), encoding="utf-8")
    return out_dir / "index.html"
