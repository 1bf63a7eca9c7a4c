"""Validation during training and the closing evaluation of a run's best checkpoint."""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np

from ambsn_jax.checkpoint import store
from ambsn_jax.data.demo import demo_root
from ambsn_jax.evaluation import sidd as sidd_eval
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.train.config import Config
from ambsn_jax.train.runlog import METRICS_FILE

EVAL_FILE = "eval.json"


def validation_dir(cfg: Config) -> Path | None:
    """The folder of SIDD-format validation blocks, if the config validates."""
    if cfg.val.dir is None:
        return None
    return demo_root() if cfg.val.dir == "demo" else Path(cfg.val.dir)


def validation_subset(val_dir: Path, blocks_per_image: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) blocks that validation during training scores: the first
    `blocks_per_image` of each image (all when None)."""
    noisy, clean = sidd_eval.load_validation(val_dir)
    k = blocks_per_image or noisy.shape[1]
    return noisy[:, :k], clean[:, :k]


def validation_scores(
    denoiser: BatchDenoiser, params: dict, val: tuple[np.ndarray, np.ndarray], cfg: Config
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean PSNR / SSIM of the validation subset under the release's full default inference,
    its blocks split over the training mesh (every host gets the same scores, which each
    host's manager records), and the first `log.images` blocks as noisy | denoised | clean rows."""
    noisy, clean = val
    scores = sidd_eval.score_validation(denoiser.bind(params), noisy, clean, cfg.seed, cfg.val.batch_size, keep_outputs=True)
    flat_noisy, flat_clean = (v.reshape(-1, *v.shape[2:]) for v in val)
    shown = range(min(cfg.log.images, len(flat_noisy)))
    rows = [np.concatenate([flat_noisy[i], scores["denoised"][i], flat_clean[i]], axis=1) for i in shown]
    return {"psnr": scores["psnr"], "ssim": scores["ssim"]}, rows


def final_evaluation(
    cfg: Config, workdir: Path, val_dir: Path | None, denoiser: BatchDenoiser, last_step: int, total_steps: int
) -> int:
    """After the last step: `evaluate.py`'s own report on the best (else latest) checkpoint,
    written to `EVAL_FILE`, and the closing lines; 0."""
    lead = jax.process_index() == 0
    if val_dir is None:
        if not lead:
            return 0
        print(
            "no validation set was given, so no checkpoint was scored and the latest is kept as the result; "
            "to score during training, add --set val.dir=<folder of SIDD validation .mat files>"
        )
        say_where(workdir, last_step, total_steps)
        return 0
    best = store.load_checkpoint(workdir)
    report = sidd_eval.evaluate_validation(best, val_dir, denoiser.cfg, cfg.seed, cfg.val.batch_size, denoiser=denoiser)
    if not lead:
        return 0
    report["training"] = {"steps": last_step, "of_steps": total_steps, "stopped_early": last_step < total_steps}
    sidd_eval.write_json(workdir / EVAL_FILE, report)
    print(f"step {best.step} (best by validation PSNR): {sidd_eval.summary_line(report)}")
    say_where(workdir, last_step, total_steps)
    return 0


def say_where(workdir: Path, last_step: int, total_steps: int) -> None:
    """The closing lines: how far the run got, where its results are and how to use them."""
    if last_step < total_steps:
        print(
            f"stopped early at step {last_step} of {total_steps} (--max-steps): the weights and any score are "
            "those of a run cut short; rerun without --max-steps to finish it"
        )
    print(f"checkpoints: {workdir / store.WORKDIR_CHECKPOINTS}; logs: {workdir / METRICS_FILE}, {workdir / 'tb'}")
    print(f"use them: python evaluate.py --ckpt {workdir} --input PHOTOS --output OUT")
