"""The pieces of a self-contained HTML page: escaping, the inline CSS and JavaScript (sortable
tables), key-value tables and an inline SVG histogram. No network is needed to view it."""

from __future__ import annotations

import html
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np


def escape(value: Any) -> str:
    """Text for HTML (content and quoted attributes): every string may come from user data."""
    return html.escape(str(value), quote=True)


CSS = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 24px; color: #222; max-width: 1300px; }
h1 { font-size: 22px; } h2 { font-size: 18px; margin-top: 28px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; }
th { background: #eee; } td.text, th.text { text-align: left; }
table.sortable th { cursor: pointer; user-select: none; }
table.sortable th[aria-sort=ascending]::after { content: " \\25B2"; }
table.sortable th[aria-sort=descending]::after { content: " \\25BC"; }
tr.featured td { background: #fff6d5; }
.means td:first-child { text-align: left; }
.row { display: flex; gap: 12px; flex-wrap: wrap; align-items: flex-start; }
figure { margin: 0; } figcaption { font-size: 12px; color: #555; }
img.zoom { image-rendering: pixelated; }
.note { color: #555; font-size: 12px; }
"""

# Sorts a table.sortable by the clicked column (numbers by each cell's data-v), toggling order.
JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th");
  heads.forEach(function (th, col) {
    th.addEventListener("click", function () {
      var down = th.getAttribute("aria-sort") !== "descending";
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", down ? "descending" : "ascending");
      var body = table.tBodies[0];
      var rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.v, y = b.cells[col].dataset.v;
        var d = (x !== undefined && y !== undefined) ? x - y
              : a.cells[col].textContent.localeCompare(b.cells[col].textContent);
        return down ? -d : d;
      });
      rows.forEach(function (r) { body.appendChild(r); });
    });
  });
});
"""


def page(title: str, body: str) -> str:
    return (
        f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>{escape(title)}</title>\n'
        f"<style>{CSS}</style>\n</head>\n<body>\n<h1>{escape(title)}</h1>\n{body}\n"
        f"<script>{JS}</script>\n</body>\n</html>\n"
    )


def _flat(mapping: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            yield from _flat(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def key_values(mapping: Mapping[str, Any]) -> str:
    """A two-column table of a (nested) mapping: options, checkpoint, timings."""
    rows = "".join(
        f'<tr><td class="text">{escape(k)}</td><td class="text">{escape(f"{v:.6g}" if isinstance(v, float) else v)}</td></tr>'
        for k, v in _flat(mapping)
    )
    return f"<table>{rows}</table>"


def histogram_svg(values: np.ndarray, width: int = 640, height: int = 240) -> str:
    """Counts of `values` in bins, as an inline SVG bar chart with labelled axes."""
    low, high = float(values.min()), float(values.max())
    if high - low < 1e-6:  # one value: a bin around it rather than a zero-width range
        low, high = low - 0.5, high + 0.5
    bins = int(np.clip(np.ceil(np.sqrt(len(values))), 5, 30))
    counts, edges = np.histogram(values, bins=bins, range=(low, high))
    left, bottom, top, right = 40, 36, 12, 28  # room for the end labels, centred on the edges
    plot_w, plot_h = width - left - right, height - top - bottom
    peak = max(int(counts.max()), 1)
    bar_w = plot_w / bins
    parts = [
        f'<svg id="gain-histogram" xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="histogram of per-block PSNR gains">',
        f'<line x1="{left}" y1="{top + plot_h}" x2="{left + plot_w}" y2="{top + plot_h}" stroke="#333"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{top + plot_h}" stroke="#333"/>',
    ]
    for i, count in enumerate(counts):
        h = plot_h * count / peak
        x = left + i * bar_w
        parts.append(
            f'<rect class="bar" x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w - 2:.1f}" '
            f'height="{h:.1f}" fill="#4a7fb5"><title>{edges[i]:+.2f} to {edges[i + 1]:+.2f} dB: '
            f"{count} block(s)</title></rect>"
        )
    for i in range(0, bins + 1, max(1, bins // 6)):
        x = left + i * bar_w
        parts.append(
            f'<text x="{x:.1f}" y="{top + plot_h + 14}" font-size="11" text-anchor="middle">{edges[i]:+.2f}</text>'
        )
    for count in sorted({0, peak // 2, peak}):
        y = top + plot_h - plot_h * count / peak
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{count}</text>')
    parts.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" font-size="12" text-anchor="middle">'
        "PSNR gain, denoised - noisy (dB)</text>"
    )
    parts.append("</svg>")
    return "\n".join(parts)
