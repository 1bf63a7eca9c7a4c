"""SIDD blocks: denoise them in fixed-shape batches and score the validation set as the release does.

Blocks are numbered image-major (n = image * blocks_per_image + block), as the Kaggle IDs are;
block n's R3 randomness comes from `item_keys(seed, [n])`.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Container, Iterator
from pathlib import Path
from typing import Any

import jax
import numpy as np
from tqdm import tqdm

from ambsn_jax.checkpoint.store import Checkpoint
from ambsn_jax.data.sidd import load_blocks
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation.common import checkpoint_record
from ambsn_jax.evaluation.resume import PartialBlocks
from ambsn_jax.files import atomic_path
from ambsn_jax.inference.denoiser import BatchDenoiser, BoundDenoiser
from ambsn_jax.inference.keys import item_keys
from ambsn_jax.inference.release import InferenceConfig, postprocess
from ambsn_jax.metrics import psnr, ssim, ssim_gaussian, ssim_y
from ambsn_jax.ops.windows import pad_to_min_side, padded_batches

VALIDATION_NOISY = "ValidationNoisyBlocksSrgb.mat"
VALIDATION_CLEAN = "ValidationGtBlocksSrgb.mat"
BENCHMARK_NOISY = "BenchmarkNoisyBlocksSrgb.mat"
SSIM_MIN_SIDE = 11  # the larger SSIM window: the release's is 7x7, the Gaussian (Wang et al.) one 11x11

# Written into the report: papers quote either convention under the one name "SSIM".
SSIM_CONVENTIONS = {
    "ssim": "the release's: skimage structural_similarity defaults, 7x7 uniform window, sample covariance",
    "ssim_gaussian": "Wang et al. 2004: 11x11 Gaussian window, sigma 1.5, population covariance",
    "ssim_y": "TM-BSN's release: luma (rgb2ycbcr Y) of the uint8 images, 11x11 Gaussian window, sigma 1.5, sample covariance",
}


def _folder_holding(root: str | Path, *names: str) -> Path:
    root = Path(root)
    holds = " and ".join(names)
    if not root.is_dir():
        raise UserError(f"{root}: no such folder; pass the folder that holds {holds}")
    missing = [n for n in names if not (root / n).is_file()]
    if missing:
        raise UserError(f"{root}: lacks {' and '.join(missing)}; pass the folder that holds {holds}")
    return root


def _load_nonempty(path: Path) -> np.ndarray:
    blocks = load_blocks(path)
    if blocks.size == 0:
        raise UserError(f"{path}: holds no blocks (shape {blocks.shape}); pass a file with blocks in it")
    return blocks


def load_validation(root: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) uint8 blocks (images, blocks, H, W, 3) of a SIDD validation folder."""
    root = _folder_holding(root, VALIDATION_NOISY, VALIDATION_CLEAN)
    noisy = _load_nonempty(root / VALIDATION_NOISY)
    clean = _load_nonempty(root / VALIDATION_CLEAN)
    if noisy.shape != clean.shape:
        raise UserError(
            f"{root}: noisy blocks {noisy.shape} and clean blocks {clean.shape} differ in shape; "
            "pass the two files of one validation set"
        )
    h, w = noisy.shape[2:4]
    if min(h, w) < SSIM_MIN_SIDE:
        # Denoising pads small blocks, but the SSIM windows cannot score them.
        raise UserError(
            f"{root}: blocks of {h}x{w} pixels: too small to score, the Gaussian SSIM needs {SSIM_MIN_SIDE}x{SSIM_MIN_SIDE}; "
            "pass blocks at least that large"
        )
    return noisy, clean


def load_benchmark(root: str | Path) -> np.ndarray:
    """The noisy uint8 blocks (images, blocks, H, W, 3) of a SIDD benchmark folder."""
    return _load_nonempty(_folder_holding(root, BENCHMARK_NOISY) / BENCHMARK_NOISY)


@dataclasses.dataclass
class Timing:
    """Where the time went: compilation apart from running the compiled batches."""

    compile_s: float = 0.0
    run_s: float = 0.0
    blocks: int = 0

    def per_block_s(self) -> float:
        return self.run_s / max(self.blocks, 1)


def call_size(denoiser: BoundDenoiser, n: int, batch: int) -> int:
    """Blocks per call of `denoise_blocks` for `n` blocks: `batch` per device, fewer if `n` is small."""
    devices = denoiser.devices
    return min(batch, -(-n // devices)) * devices


def denoise_blocks(
    denoiser: BoundDenoiser, blocks: np.ndarray, seed: int, batch: int, timing: Timing, skip: Container[int] = ()
) -> Iterator[tuple[int, np.ndarray]]:
    """Yields (n of its first block, rounded uint8 batch) for blocks (N, H, W, 3), in order.

    Each call denoises `batch` blocks per device of the denoiser's mesh, every process its own
    rows, and every process gets the whole call's results. Every call has one shape, so one
    compilation serves all blocks (the last call is padded; its padding is dropped here); the
    time spent is added to `timing`. Blocks smaller than R3 needs are padded and cropped back.
    Calls whose first block is in `skip` (the same on every process) are left out.
    """
    n, h, w = blocks.shape[:3]
    blocks = pad_to_min_side(blocks, denoiser.min_side(), axes=(1, 2))
    per_call = call_size(denoiser, n, batch)
    mine = denoiser.batch_denoiser.local_rows(per_call)
    start_time = time.perf_counter()
    denoiser.compile((len(mine), *blocks.shape[1:3], 3))
    timing.compile_s += time.perf_counter() - start_time
    for indices, valid in padded_batches(n, per_call):
        if int(indices[0]) in skip:
            continue
        start_time = time.perf_counter()
        out = denoiser.run(blocks[indices[mine]].astype(np.float32), item_keys(seed, indices[mine]))
        rounded = np.asarray(postprocess(out)).astype(np.uint8)[:valid, :h, :w]
        timing.run_s += time.perf_counter() - start_time
        timing.blocks += valid
        yield int(indices[0]), rounded


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="block", disable=None, dynamic_ncols=True)


def denoise_benchmark(
    denoiser: BoundDenoiser, noisy: np.ndarray, seed: int, batch: int, partial: PartialBlocks | None = None
) -> np.ndarray:
    """All blocks (images, blocks, H, W, 3) denoised and rounded, uint8 in the same shape.

    With `partial`, the calls an earlier run finished are read back from it and each new one
    is kept in it: the result is the same, since a block's output depends only on the seed,
    its index and the call size (which `partial`'s options must hold).
    """
    flat = noisy.reshape(-1, *noisy.shape[2:])
    out = np.empty_like(flat)
    n = len(flat)
    per_call = call_size(denoiser, n, batch)
    starts = list(range(0, n, per_call))
    done = {} if partial is None else partial.load(starts, [(min(per_call, n - s), *flat.shape[1:]) for s in starts])
    with _progress(n, "SIDD benchmark") as bar:
        for start, blocks in done.items():
            out[start : start + len(blocks)] = blocks
            bar.update(min(per_call, n - start))
        for start, rounded in denoise_blocks(denoiser, flat, seed, batch, Timing(), skip=done):
            out[start : start + len(rounded)] = rounded
            if partial is not None:
                partial.save(start, rounded)
            bar.update(len(rounded))
    return out.reshape(noisy.shape)


def score_validation(
    denoiser: BoundDenoiser,
    noisy: np.ndarray,
    clean: np.ndarray,
    seed: int,
    batch: int,
    limit: int | None = None,
    keep_outputs: bool = False,
) -> dict[str, Any]:
    """Scores of the first `limit` (default all) blocks, as the JSON report holds them.

    `psnr` / `ssim` are means over blocks of the rounded output against clean (docs/release.md,
    "Scores"); `noisy_psnr` / `noisy_ssim` the same for the noisy input; `ssim_gaussian` /
    `noisy_ssim_gaussian` and `ssim_y` / `noisy_ssim_y` the other SSIM conventions (`SSIM_CONVENTIONS`). `timing.total_s`
    covers compilation, denoising and scoring, not reading files or the checkpoint.
    `keep_outputs` adds `denoised`, the rounded uint8 blocks (N, H, W, 3): not JSON, for the
    visual report.
    """
    start_time = time.perf_counter()
    per_image = noisy.shape[1]
    flat_noisy = noisy.reshape(-1, *noisy.shape[2:])[:limit]
    flat_clean = clean.reshape(-1, *clean.shape[2:])[:limit]
    timing = Timing()
    blocks = []
    outputs = []
    with _progress(len(flat_noisy), "SIDD validation") as bar:
        for start, rounded in denoise_blocks(denoiser, flat_noisy, seed, batch, timing):
            for n, out in enumerate(rounded, start):
                blocks.append(
                    {
                        "image": n // per_image,
                        "block": n % per_image,
                        "psnr": psnr(flat_clean[n], out),
                        "ssim": ssim(flat_clean[n], out),
                        "ssim_gaussian": ssim_gaussian(flat_clean[n], out),
                        "ssim_y": ssim_y(flat_clean[n], out),
                    }
                )
            if keep_outputs:
                outputs.append(rounded)
            bar.update(len(rounded))
            bar.set_postfix(psnr=f"{np.mean([b['psnr'] for b in blocks]):.2f}")
    scores = {
        "psnr": float(np.mean([b["psnr"] for b in blocks])),
        "ssim": float(np.mean([b["ssim"] for b in blocks])),
        "noisy_psnr": float(np.mean([psnr(c, x) for c, x in zip(flat_clean, flat_noisy)])),
        "noisy_ssim": float(np.mean([ssim(c, x) for c, x in zip(flat_clean, flat_noisy)])),
        "ssim_gaussian": float(np.mean([b["ssim_gaussian"] for b in blocks])),
        "noisy_ssim_gaussian": float(np.mean([ssim_gaussian(c, x) for c, x in zip(flat_clean, flat_noisy)])),
        "ssim_y": float(np.mean([b["ssim_y"] for b in blocks])),
        "noisy_ssim_y": float(np.mean([ssim_y(c, x) for c, x in zip(flat_clean, flat_noisy)])),
        "ssim_conventions": SSIM_CONVENTIONS,
        "blocks": blocks,
        "timing": {
            "compile_s": timing.compile_s,
            "per_block_s": timing.per_block_s(),
            "total_s": time.perf_counter() - start_time,
        },
    }
    if keep_outputs:
        scores["denoised"] = np.concatenate(outputs)
    return scores


def evaluate_validation(
    checkpoint: Checkpoint,
    root: str | Path,
    cfg: InferenceConfig,
    seed: int = 0,
    batch: int = 4,
    limit: int | None = None,
    denoiser: BatchDenoiser | None = None,
    keep_outputs: bool = False,
) -> dict[str, Any]:
    """The JSON report of `checkpoint` on the SIDD-format validation folder `root`:
    `score_validation`'s scores, the full inference options under the release's names, and
    the checkpoint. What `evaluate.py --sidd-val` and the end of training both run; a
    `denoiser` of the same network and `cfg` may be passed to reuse its compiled programs;
    `keep_outputs` as `score_validation`'s."""
    noisy, clean = load_validation(root)
    if denoiser is None:
        denoiser = BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, cfg)
    scores = score_validation(denoiser.bind(checkpoint.params), noisy, clean, seed, batch, limit, keep_outputs)
    options = {"dataset": str(root), "seed": seed, "batch": batch, "limit": limit, **cfg.release_options()}
    return {
        **scores,
        "options": options,
        "checkpoint": checkpoint_record(checkpoint),
        "devices": denoiser.devices,
        "processes": jax.process_count(),
    }


def summary_line(report: dict[str, Any]) -> str:
    """The one line that a validation report prints."""
    t = report["timing"]
    return (
        f"{len(report['blocks'])} blocks of {report['options']['dataset']}: PSNR {report['psnr']:.2f} dB, "
        f"SSIM {report['ssim']:.4f} (noisy input {report['noisy_psnr']:.2f} dB, {report['noisy_ssim']:.4f}); "
        f"compile {t['compile_s']:.1f} s, {t['per_block_s']:.3f} s/block"
    )


def write_json(path: str | Path, report: dict[str, Any]) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(report, indent=2) + "\n")
