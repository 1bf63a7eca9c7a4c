"""The peer table: classical denoisers and every network this project runs, scored alike on the
demo validation set (or any SIDD-format folder), with seconds per 256 x 256 block.

    python bench/peers.py [--sidd-val DIR] [--ckpt CKPT ...] [--peers NAMES] [--limit N]
                          [--repeats N] [--json PATH] [--figure PNG]

Peers (`--peers`, comma-separated; default all): bm3d_psd (BM3D for correlated noise, PSD
estimated from each noisy block alone), bm3d_white (sigma from scikit-image's estimate), nlm
(scikit-image non-local means), n2v (Noise2Void through CAREamics: see N2V_STATUS), default
(the weights used with no `--ckpt`), student (the shipped student); every `--ckpt` (an Orbax
directory, a training workdir or a release .pth) is scored too. BM3D needs `pip install -e ".[peers]"`. Networks run their
default inference and are scored by `evaluate.py`'s own code; every peer is timed on the same
256 x 256 noisy image (the blocks laid out in a grid), median of `--repeats` after a first call.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
from pathlib import Path

import cv2
import jax
import numpy as np

from ambsn_jax.checkpoint.store import DEFAULT_WEIGHTS, DEMO_STUDENT, load_checkpoint
from ambsn_jax.data.demo import demo_root
from ambsn_jax.evaluation import peers
from ambsn_jax.evaluation.sidd import evaluate_validation, load_validation
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.keys import item_keys
from ambsn_jax.inference.release import default_inference

SIDE = 256
# Checked on this project's environment (2026-12-07); `pip install careamics` is the test.
N2V_STATUS = (
    "not run: careamics 0.3.5 (the latest) caps torchvision at 0.26, which pins torch 2.11, while this "
    "project installs torch 2.13 (pip: ResolutionImpossible); pip's fallback, careamics 0.0.4.2, "
    "downgrades NumPy to 1.26, which JAX 0.10 refuses"
)
FIGURE_COLUMNS = ("noisy", "bm3d_psd", "default", "student", "clean")
ZOOM = 2


def classical_row(name: str, noisy: np.ndarray, clean: np.ndarray, timing: np.ndarray, repeats: int) -> tuple[dict, np.ndarray]:
    fn = peers.CLASSICAL[name]
    out = peers.denoise_each(fn, noisy)
    row = {"peer": name, "method": fn.__doc__.split("\n")[0], **peers.score_blocks(out, clean)}
    row["s_per_block"] = peers.seconds_per_call(lambda: fn(timing), repeats)
    return row, out


def network_row(name: str, ckpt: str | Path, root: Path, limit: int | None, timing: np.ndarray, repeats: int) -> tuple[dict, np.ndarray]:
    checkpoint = load_checkpoint(ckpt)
    cfg = default_inference(checkpoint.meta)
    denoiser = BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, cfg)
    report = evaluate_validation(checkpoint, root, cfg, limit=limit, denoiser=denoiser, keep_outputs=True)
    bound = denoiser.bind(checkpoint.params)
    x, keys = timing[None].astype(np.float32), item_keys(0, [0])
    row = {
        "peer": name, "method": f"{checkpoint.meta.architecture.display_name}, default inference",
        "checkpoint": str(ckpt), "config": checkpoint.meta.config, "source": checkpoint.meta.source,
        "psnr": report["psnr"], "ssim": report["ssim"], "ssim_gaussian": report["ssim_gaussian"],
        "params": sum(int(np.size(leaf)) for leaf in jax.tree.leaves(checkpoint.params)),
        "block_psnr": [b["psnr"] for b in report["blocks"]],
        "s_per_block": peers.seconds_per_call(lambda: np.asarray(bound(x, keys)), repeats),
    }  # fmt: skip
    return row, report["denoised"]


def figure(path: Path, outputs: dict[str, np.ndarray], blocks: list[int]) -> None:
    """The same blocks side by side, one row each, in FIGURE_COLUMNS' order (those present)."""
    names = [n for n in FIGURE_COLUMNS if n in outputs]
    rows = [np.hstack([outputs[n][b] for n in names]) for b in blocks]
    grid = np.repeat(np.repeat(np.vstack(rows), ZOOM, axis=0), ZOOM, axis=1)
    side = outputs[names[0]].shape[2] * ZOOM
    band = np.full((18, grid.shape[1], 3), 255, np.uint8)
    for i, name in enumerate(names):
        cv2.putText(band, name, (i * side + 4, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (0, 0, 0), 1, cv2.LINE_AA)
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(np.vstack([band, grid]), cv2.COLOR_RGB2BGR))


def run(root: Path, wanted: set[str], ckpts: list[str], limit: int | None, repeats: int) -> tuple[list[dict], dict]:
    noisy, clean = (b.reshape(-1, *b.shape[2:])[:limit] for b in load_validation(root))
    timing = peers.timing_image(noisy, SIDE)
    rows = [{"peer": "noisy", "method": "the input", **peers.score_blocks(noisy, clean)}]
    outputs = {"noisy": noisy, "clean": clean}
    for name in (n for n in peers.CLASSICAL if n in wanted):
        row, outputs[name] = classical_row(name, noisy, clean, timing, repeats)
        rows.append(row)
        print(f"{name}: {row['psnr']:.2f} dB, {row['s_per_block']:.3f} s per block", flush=True)
    if "n2v" in wanted:
        rows.append({"peer": "n2v", "method": "Noise2Void (CAREamics)", "status": N2V_STATUS})
    shipped = [(n, c) for n, c in (("default", DEFAULT_WEIGHTS), ("student", DEMO_STUDENT)) if n in wanted]
    for name, ckpt in shipped + [(str(c), c) for c in ckpts]:
        row, outputs[name] = network_row(name, ckpt, root, limit, timing, repeats)
        rows.append(row)
        print(f"{name}: {row['psnr']:.2f} dB, {row['s_per_block']:.3f} s per block, {row['params']:,} parameters", flush=True)
    return rows, outputs


def table(rows: list[dict]) -> str:
    lines = ["| peer | PSNR dB | SSIM (7x7 uniform) | SSIM (Gaussian) | s per 256^2 block |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        if "psnr" not in r:
            lines.append(f"| {r['peer']} | {r['status']} | | | |")
            continue
        seconds = f"{r['s_per_block']:.3f}" if "s_per_block" in r else ""
        lines.append(f"| {r['peer']} | {r['psnr']:.2f} | {r['ssim']:.4f} | {r['ssim_gaussian']:.4f} | {seconds} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sidd-val", type=Path, help="a SIDD-format validation folder (default: the demo set)")
    ap.add_argument("--ckpt", action="append", default=[], help="another network to score (repeatable)")
    ap.add_argument("--peers", default="bm3d_psd,bm3d_white,nlm,n2v,default,student")
    ap.add_argument("--limit", type=int, help="score only the first N blocks")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("peers_results.json"))
    ap.add_argument("--figure", type=Path, help="PNG of the first two blocks side by side")
    args = ap.parse_args(argv)
    root = args.sidd_val or demo_root()
    load_start = os.getloadavg()[0]
    rows, outputs = run(root, set(args.peers.split(",")), args.ckpt, args.limit, args.repeats)
    machine = {
        "platform": platform.platform(), "cpus": os.cpu_count(), "device": jax.devices()[0].device_kind,
        "load_average_start": load_start, "load_average_end": os.getloadavg()[0],
    }  # fmt: skip
    print(f"{root}, {len(outputs['noisy'])} blocks, load average {load_start:.1f} -> {machine['load_average_end']:.1f}")
    print(table(rows))
    args.json.write_text(json.dumps({"dataset": str(root), "machine": machine, "rows": rows}, indent=1) + "\n")
    if args.figure:
        figure(args.figure, outputs, [0, min(9, len(outputs["noisy"]) - 1)])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
