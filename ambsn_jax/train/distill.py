"""Distillation's targets: the teacher's full default inference of every training image,
computed once before training and kept on disk (docs/student.md).

Once, not per step: the teacher's default inference runs its network ten times per pixel,
and a run reads each training pixel more than once (the demo's run 13 times, SIDD's recipe
about 1.6 times: docs/student.md), so the cache costs less; whole images also give the
teacher all the context a training crop would cut off. It is `evaluate.py --input` of the
teacher onto `distill.targets_dir`, so it resumes the same way (a killed run redoes only the
missing targets, another teacher or other options redo all) and splits the images over the
processes, each writing its own share.
"""

from __future__ import annotations

import sys
from pathlib import Path

import jax

from ambsn_jax import mesh as meshlib
from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT, load_checkpoint
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation.folder import denoise_files, output_paths, resume_options
from ambsn_jax.evaluation.resume import Resume
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.release import default_inference
from ambsn_jax.ops.windows import Tiling

TARGETS_DIR = "teacher"  # in the workdir, unless distill.targets_dir says otherwise


def teacher_path(teacher: str) -> str:
    """The checkpoint `distill.teacher` names: "demo" is the shipped demo weights."""
    return str(DEMO_CHECKPOINT) if teacher == "demo" else teacher


def teacher_targets(
    teacher: str, images: list[Path], targets_dir: Path, seed: int, precision: str
) -> list[tuple[Path, Path]]:
    """(noisy image, teacher's output) for every training image, the outputs made where missing.

    The teacher runs its default inference (AM-BSN: PD-2 / PD-5 fusion then R3), image i
    drawing its R3 randomness from (seed, i) as `evaluate.py` does; outputs are rounded as
    saved images are. Raises UserError if the teacher is not a blind-spot network or an image
    fails.
    """
    checkpoint = load_checkpoint(teacher_path(teacher))
    record = checkpoint.meta.architecture
    if not record.blind_spot:
        raise UserError(f"distill.teacher {teacher}: a {record.display_name}; the teacher must be AM-BSN, AP-BSN or MM-BSN")
    inference = default_inference(checkpoint.meta, precision=precision)
    tiling = Tiling()
    denoiser = BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, inference, meshlib.local_mesh())
    outputs = output_paths(images, targets_dir)
    targets_dir.mkdir(parents=True, exist_ok=True)
    # evaluate.py's own record: targets it wrote for this teacher and seed are taken as they are.
    resume = Resume(targets_dir, resume_options(checkpoint, inference, seed, tiling), overwrite=False)
    if jax.process_index() == 0:
        print(
            f"teacher {checkpoint.path} ({record.display_name}, C={checkpoint.meta.config.get('base_ch')}): "
            f"its default inference of the {len(images)} training images -> {targets_dir}",
            file=sys.stderr, flush=True,
        )  # fmt: skip
    try:
        failures = denoise_files(denoiser.bind(checkpoint.params), outputs, seed, tiling, resume)
    finally:
        resume.close()
    for failure in failures:
        print(f"error: {failure}", file=sys.stderr)
    # A collective: past it, every process's share is on disk, ready for every reader.
    failed = meshlib.total(len(failures))
    if failed:
        raise UserError(f"the teacher could not denoise {failed} of the {len(images)} training images (listed above)")
    return list(outputs.items())
