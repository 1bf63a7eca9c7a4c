"""Distillation's targets: the teacher's full default inference of every training image,
computed once before training and kept on disk (docs/student.md).

Once, not per step: the teacher's default inference runs its network ten times per pixel,
and a run reads each training pixel more than once (the demo's run 13 times, SIDD's recipe
about 1.6 times: docs/student.md), so the cache costs less; whole images also give the
teacher all the context a training crop would cut off. It is `evaluate.py --input` of the
teacher onto `distill.targets_dir`, so it resumes the same way (a killed run redoes only the
missing targets, another teacher or other options redo all) and splits the images over the
processes, each writing its own share. With `distill.recharge`, a TM-BSN teacher makes one
such set per hole size, which the Recharger mixes at every step (docs/nbsn.md, "Distillation").
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import jax

from ambsn_jax import mesh as meshlib
from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT, Checkpoint, load_checkpoint
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation.folder import denoise_files, output_paths, resume_options
from ambsn_jax.evaluation.resume import Resume
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.release import default_inference
from ambsn_jax.ops.windows import Tiling

TARGETS_DIR = "teacher"  # in the workdir, unless distill.targets_dir says otherwise
# distill.teacher SHOTS: no teacher; each noisy image's target is the other noisy shot of its
# scene (SIDD Medium's _010 / _011, two independent draws of the same noise): Noise2Noise.
SHOTS = "shots"
_SHOT_NAMES = ("_NOISY_SRGB_010", "_NOISY_SRGB_011")
_CLEAN_NAME = "_GT_SRGB_010"


def teacher_path(teacher: str) -> str:
    """The checkpoint `distill.teacher` names: "demo" is the shipped demo weights."""
    return str(DEMO_CHECKPOINT) if teacher == "demo" else teacher


def source_note(teacher: str, recharge: tuple[int, ...] = (), fresh_noise: bool = False) -> str:
    """What the checkpoints' metadata says the student learned from."""
    if fresh_noise:
        return "Noise2Noise on pairs of noisy shots drawn afresh for every crop by the demo's camera noise model (no clean pixel in the loss)"
    if teacher == SHOTS:
        return "Noise2Noise on each scene's two noisy shots"
    mixed = f", its holes {', '.join(map(str, recharge))} recharged" if recharge else ""
    return f"distilled from {teacher_path(teacher)}{mixed}"


def _shot_of(image: Path) -> str:
    """The shot marker (`_SHOT_NAMES`) in `image`'s name, in any case."""
    ours = [s for s in _SHOT_NAMES if s in image.name.upper()]
    if not ours:
        raise UserError(f"{image}: not a SIDD Medium noisy shot (_NOISY_SRGB_010 / _011); distill.teacher={SHOTS} needs both shots of each scene")
    return ours[0]


def _with_shot_replaced(image: Path, shot: str, new: str) -> Path:
    start = image.name.upper().index(shot)
    return image.with_name(image.name[:start] + new + image.name[start + len(shot) :])


def shot_pairs(images: list[Path]) -> list[tuple[Path, Path]]:
    """(noisy image, the other noisy shot of the same scene) for every training image, whole
    images or patches alike (a patch's name keeps its image's). The loss never sees a clean
    pixel: L1 to an independent noisy shot is minimised by the median of the noise-free value
    given the input, which the sRGB curve and the demosaic (both monotone or linear) keep."""
    pairs = []
    for image in images:
        shot = _shot_of(image)
        partner = _with_shot_replaced(image, shot, _SHOT_NAMES[1 - _SHOT_NAMES.index(shot)])
        if not partner.is_file():
            raise UserError(f"{image}: its scene's other shot {partner.name} is missing; distill.teacher={SHOTS} needs both shots")
        pairs.append((image, partner))
    return pairs


def clean_sources(images: list[Path]) -> list[Path]:
    """The ground truth of each scene the noisy `images` show (SIDD Medium's _GT_SRGB_010), once
    per scene: `data.fresh_noise` noises it afresh for every crop. The loss still sees noisy
    pixels only, two independent shots, as with `shot_pairs`; the clean image feeds the noise
    model, which stands in for the camera taking more shots."""
    scenes = {}
    for noisy, _ in shot_pairs(images):
        clean = _with_shot_replaced(noisy, _shot_of(noisy), _CLEAN_NAME)
        if not clean.is_file():
            raise UserError(f"{noisy}: its scene's ground truth {clean.name} is missing; data.fresh_noise noises it afresh")
        scenes.setdefault(clean, None)
    return list(scenes)


def teacher_targets(
    teacher: str, images: list[Path], targets_dir: Path, seed: int, precision: str, recharge: tuple[int, ...] = ()
) -> list[tuple[Path, ...]]:
    """(noisy image, teacher's output) for every training image, the outputs made where missing
    (`teacher` SHOTS: `shot_pairs`, nothing computed); with `recharge` hole sizes, (noisy
    image, the TM-BSN teacher's output at each hole) instead, each hole's in its own folder
    `targets_dir/hole<h>`.

    The teacher runs its default inference (AM-BSN: PD-2 / PD-5 fusion then R3; TM-BSN: one
    reflect-padded pass, at the hole given), image i drawing its R3 randomness from (seed, i)
    as `evaluate.py` does; outputs are rounded as saved images are. Raises UserError if the
    teacher is not a blind-spot network (with `recharge`: not TM-BSN) or an image fails.
    """
    if teacher == SHOTS:
        if recharge:
            raise UserError(f"distill.recharge mixes a TM-BSN teacher's outputs; distill.teacher={SHOTS} has none")
        return shot_pairs(images)
    checkpoint = load_checkpoint(teacher_path(teacher))
    record = checkpoint.meta.architecture
    if not record.blind_spot:
        raise UserError(f"distill.teacher {teacher}: a {record.display_name}; the teacher must be AM-BSN, AP-BSN or MM-BSN")
    if recharge and "hole" not in record.release_inference:
        raise UserError(f"distill.recharge: mixes a TM-BSN teacher's outputs at several hole sizes; {teacher} is a {record.display_name}")
    if not recharge:
        outputs = _denoised(checkpoint, images, targets_dir, seed, precision)
        return list(outputs.items())
    per_hole = [_denoised(checkpoint, images, targets_dir / f"hole{h}", seed, precision, hole=h) for h in recharge]
    return [(image, *(outputs[image] for outputs in per_hole)) for image in images]


def _denoised(
    checkpoint: Checkpoint, images: list[Path], targets_dir: Path, seed: int, precision: str, **switches: Any
) -> dict[Path, Path]:
    """`evaluate.py --input` of the teacher with its default inference (`switches` changed):
    the output of every image, made where missing (this process's share)."""
    inference = default_inference(checkpoint.meta, precision=precision, **switches)
    tiling = Tiling()
    denoiser = BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, inference, meshlib.local_mesh())
    outputs = output_paths(images, targets_dir)
    targets_dir.mkdir(parents=True, exist_ok=True)
    # evaluate.py's own record: targets it wrote for this teacher and seed are taken as they are.
    resume = Resume(targets_dir, resume_options(checkpoint, inference, seed, tiling), overwrite=False)
    record = checkpoint.meta.architecture
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
    return outputs
