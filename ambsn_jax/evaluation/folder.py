"""Denoising image files: each input comes out as `<stem>.png` with its own size, depth and channels."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from ambsn_jax import mesh as meshlib
from ambsn_jax.distributed import speaker
from ambsn_jax.checkpoint.store import Checkpoint
from ambsn_jax.data.images import read_image, write_image
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation.common import checkpoint_record
from ambsn_jax.evaluation.resume import Resume, fingerprint
from ambsn_jax.inference.denoiser import BoundDenoiser
from ambsn_jax.inference.keys import item_keys
from ambsn_jax.inference.release import InferenceConfig
from ambsn_jax.inference.tiling import Tiling, denoise_image


def resume_options(checkpoint: Checkpoint, cfg: InferenceConfig, seed: int, tiling: Tiling, **extra: Any) -> dict[str, Any]:
    """What an output of an evaluation depends on, as its resume manifest records it: the
    weights (their digest), the inference options, the seed, the tiling, and `extra`."""
    return {
        "checkpoint_sha256": checkpoint_record(checkpoint)["sha256"], **cfg.release_options(),
        "seed": seed, "batch": tiling.batch, "tile": tiling.tile, "overlap": tiling.overlap, **extra,
    }  # fmt: skip


def output_paths(inputs: list[Path], out_dir: str | Path) -> dict[Path, Path]:
    """`<out_dir>/<stem>.png` for every input; refuses names that would clash or overwrite an input."""
    out_dir = Path(out_dir)
    outputs = {source: out_dir / f"{source.stem}.png" for source in inputs}
    sources = {p.resolve() for p in inputs}
    taken: dict[Path, Path] = {}
    for source, target in outputs.items():
        if target.resolve() in sources:
            raise UserError(f"{target}: would overwrite an input image; pick another --output folder")
        if target in taken:
            raise UserError(f"{taken[target]} and {source} would both be written to {target}; rename one")
        taken[target] = source
    return outputs


def denoise_files(
    denoiser: BoundDenoiser,
    outputs: dict[Path, Path],
    seed: int,
    tiling: Tiling,
    resume: Resume | None = None,
) -> list[str]:
    """Denoises this process's share of the inputs onto their output paths (every input when
    it runs alone); returns one message per file that failed.

    A file that cannot be read or written does not stop the others. Image i (in the order
    given) draws its R3 randomness from `item_keys(seed, [i])` whichever process takes it;
    large images are tiled. With `resume`, outputs an earlier run finished are kept, and each
    new one is recorded.
    """
    items = list(outputs.items())
    mine = meshlib.my_share(len(items))
    failures = []
    with tqdm(total=len(mine), desc="denoising", unit="image", disable=None) as bar:
        for count, i in enumerate(mine, start=1):
            source, target = items[i]
            item = fingerprint(i, source)
            if resume is not None and resume.finished(target.name, item):
                bar.update()
                continue
            try:
                image, info = read_image(source)
                out = denoise_image(denoiser, image, item_keys(seed, [i])[0], tiling)
                # write_image rounds as `postprocess` does (+0.5, floor, clip), at the file's own depth:
                # bit-identical for 8-bit files, and 16-bit files keep the network's finer output.
                write_image(target, np.asarray(out), info)
                if resume is not None:
                    resume.record(target.name, item)
            except UserError as e:
                failures.append(str(e))
            bar.update()
            if bar.disable:  # no terminal to draw a bar on: a line per image instead
                print(f"{speaker()}[{count}/{len(mine)}] {source} -> {target}", file=sys.stderr, flush=True)
    return failures
