"""How much tiling changes an image, by tile overlap: what the default overlap is chosen from.

    python bench/seams.py [--ckpt CKPT] [--side PX] [--tile PX] [--overlaps N ...] [--json PATH]

A crop of a demo noisy photo is denoised whole and tiled (`inference.tiling.denoise_image`, the
even grid) with R3 off, so that the two differ only by where the tiles cut the network's view
(with R3 on they differ everywhere, by its random masks; AM-BSN's PD-5 pass sees ~300 pixels
across, so they differ a little everywhere anyway). Printed per overlap: the largest and
the RMS difference in 0..255, their PSNR, and the share of 8-bit output pixels that change. The
yardstick is R3 itself: the same whole image under two R3 seeds (what a user already accepts as
"the same result"). Default weights: the shipped demo AM-BSN, the release's depth (and so its
receptive field) at C = 16.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from pathlib import Path

import jax
import numpy as np

from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT, load_checkpoint
from ambsn_jax.data.demo import demo_root
from ambsn_jax.data.images import read_image
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.release import default_inference, postprocess
from ambsn_jax.inference.tiling import denoise_image
from ambsn_jax.ops.windows import Tiling, even_windows


def _crop(side: int) -> np.ndarray:
    path = sorted((demo_root() / "SIDD_Medium_Srgb" / "Data").glob("*/*_NOISY_SRGB_010.PNG"))[0]
    image, _ = read_image(path)
    return image[:side, :side].astype(np.float32)


def _difference(a: np.ndarray, b: np.ndarray, band: np.ndarray | None = None) -> dict:
    rms = float(np.sqrt(np.mean((a - b) ** 2)))
    changed = float(np.mean(postprocess(a) != postprocess(b)))
    out = {"max": float(np.abs(a - b).max()), "rms": rms, "psnr": 20 * np.log10(255.0 / max(rms, 1e-12)), "changed": changed}
    if band is not None:  # a seam shows as a larger difference along the tile edges than between them
        out |= {"band_rms": float(np.sqrt(np.mean((a - b)[band] ** 2))), "off_band_rms": float(np.sqrt(np.mean((a - b)[~band] ** 2)))}
    return out


def _edge_band(side: int, tile: int, overlap: int, width: int = 8) -> np.ndarray:
    """Pixels within `width` (or the overlap) of a tile edge inside the image, on both axes."""
    size, starts = even_windows(side, tile, overlap)
    near = np.zeros(side, bool)
    for edge in [*starts[1:], *(s + size for s in starts[:-1])]:
        near[max(0, edge - max(width, overlap)) : edge + max(width, overlap)] = True
    return near[:, None] | near[None, :]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ckpt", default=str(DEMO_CHECKPOINT))
    ap.add_argument("--side", type=int, default=768)
    ap.add_argument("--tile", type=int, default=384)
    ap.add_argument("--overlaps", type=int, nargs="+", default=[0, 16, 32, 64])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    checkpoint = load_checkpoint(args.ckpt)
    cfg = default_inference(checkpoint.meta)
    image, key = _crop(args.side), jax.random.key(0)

    def bound(config):
        return BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, config).bind(checkpoint.params)

    r3 = bound(cfg)
    seeds = _difference(*(np.asarray(r3(image[None], jax.random.key(s)[None]))[0] for s in (0, 1)))
    plain = bound(dataclasses.replace(cfg, r3=False))
    whole = np.asarray(plain(image[None], key[None]))[0]
    rows = []
    for overlap in args.overlaps:
        tiled = denoise_image(plain, image, key, Tiling(tile=args.tile, overlap=overlap))
        rows.append({"overlap": overlap, **_difference(tiled, whole, _edge_band(args.side, args.tile, overlap))})
    print(f"{args.side}^2 crop, tiles of at most {args.tile}, load average {os.getloadavg()[0]:.1f}")
    print("| overlap | max diff | RMS diff | PSNR vs whole | 8-bit pixels changed | RMS at / off tile edges |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in [*rows, {"overlap": "R3 seed 0 vs 1 (whole)", **seeds}]:
        edges = f"{r['band_rms']:.3f} / {r['off_band_rms']:.3f}" if "band_rms" in r else "-"
        print(f"| {r['overlap']} | {r['max']:.3f} | {r['rms']:.4f} | {r['psnr']:.1f} dB | {100 * r['changed']:.2f}% | {edges} |")
    if args.json:
        args.json.write_text(json.dumps({"side": args.side, "tile": args.tile, "rows": rows, "r3_seeds": seeds}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
