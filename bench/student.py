"""Teacher against student on the demo set, in one run: PSNR / SSIM, seconds per 256 x 256 block,
FLOPs per pixel, and what those mean for a 12-megapixel photo.

    python bench/student.py [--teacher CKPT] [--student CKPT] [--repeats N] [--json PATH]

Defaults: the shipped demo weights (AM-BSN, C = 16) under their default inference (PD-2 / PD-5
fusion, then R3), and the shipped demo student (ambsn_jax/assets/demo_student) in one pass. Scores
are `evaluate.py`'s on all 16 demo blocks; a block's time is the median of `--repeats` calls after
a first one (the compile). FLOPs are XLA's count of the compiled program (R3 counted as one batch
of its 8 passes, which computes the same: XLA counts a loop's body once).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import time
from pathlib import Path

import jax
import numpy as np

from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT, DEMO_STUDENT, load_checkpoint
from ambsn_jax.data.demo import demo_root
from ambsn_jax.evaluation.sidd import evaluate_validation
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.release import default_inference

SIDE = 256
PHOTO_PIXELS = 12e6


def _seconds_per_block(checkpoint, cfg, repeats: int) -> float:
    den = BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, cfg).bind(checkpoint.params)
    x = np.random.RandomState(0).uniform(0, 255, (1, SIDE, SIDE, 3)).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), 1)
    den(x, keys)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        den(x, keys)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _flops_per_pixel(checkpoint, cfg) -> float:
    den = BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, dataclasses.replace(cfg, r3_batched=True))
    compiled = den.program.lower(*den.abstract_args(checkpoint.params, 1, SIDE, SIDE)).compile()
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, list) else cost
    return float(cost["flops"]) / SIDE**2


def measure(name: str, ckpt: str | Path, repeats: int) -> dict:
    checkpoint = load_checkpoint(ckpt)
    cfg = default_inference(checkpoint.meta)
    report = evaluate_validation(checkpoint, demo_root(), cfg)
    seconds = _seconds_per_block(checkpoint, cfg, repeats)
    flops = _flops_per_pixel(checkpoint, cfg)
    return {
        "model": name, "checkpoint": str(ckpt), "network": checkpoint.meta.architecture.display_name,
        "config": checkpoint.meta.config, "inference": cfg.release_options(),
        "parameters": int(sum(np.size(a) for a in jax.tree.leaves(checkpoint.params))),
        "psnr": report["psnr"], "ssim": report["ssim"], "noisy_psnr": report["noisy_psnr"],
        "s_per_block": seconds, "flops_per_pixel": flops,
        "photo_12mp_s": seconds * PHOTO_PIXELS / SIDE**2, "photo_12mp_tflop": flops * PHOTO_PIXELS / 1e12,
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", default=str(DEMO_CHECKPOINT))
    ap.add_argument("--student", default=str(DEMO_STUDENT))
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", type=Path, default=Path(__file__).with_name("student_results.json"))
    args = ap.parse_args()
    rows = [measure("teacher", args.teacher, args.repeats), measure("student", args.student, args.repeats)]
    teacher, student = rows
    print(f"demo set, {jax.devices()[0].device_kind}, load average {os.getloadavg()[0]:.1f}")
    print("| model | network | parameters | PSNR / SSIM | s per 256^2 block | kFLOP / pixel | 12 MP photo |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(
            f"| {r['model']} | {r['network']} | {r['parameters']:,} | {r['psnr']:.2f} dB / {r['ssim']:.3f} | "
            f"{r['s_per_block']:.3f} | {r['flops_per_pixel'] / 1e3:,.0f} | {r['photo_12mp_s'] / 60:.1f} min |"
        )
    print(
        f"student - teacher: {student['psnr'] - teacher['psnr']:+.2f} dB; "
        f"{teacher['s_per_block'] / student['s_per_block']:.1f}x faster, "
        f"{teacher['flops_per_pixel'] / student['flops_per_pixel']:.1f}x fewer FLOPs"
    )
    machine = {"platform": platform.platform(), "cpus": os.cpu_count(), "load_average": os.getloadavg()[0]}
    args.json.write_text(json.dumps({"machine": machine, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
