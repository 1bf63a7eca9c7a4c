"""`evaluate.py` / `ambsn-evaluate`: SIDD scores, benchmark submissions, denoising image files.

Exit status: 0 done, 1 some images of a folder failed (the others are written), 2 bad input
(one `error:` line, see `ambsn_jax.cli.common.run_cli`), 130 interrupted, 75 another process of a
multi-process run was lost (docs/cluster.md).

`--input`, `--dnd` and `--sidd-bench` resume: rerun with the same arguments, they redo only the
outputs an earlier run did not finish (`ambsn_jax.evaluation.resume`); `--overwrite` redoes all.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ambsn_jax import distributed
from ambsn_jax.cli.common import ArgumentParser, add_cluster_flags, cluster_settings, enable_compilation_cache, run_cli
from ambsn_jax.errors import UserError
from ambsn_jax.ops.precision import PRECISIONS
from ambsn_jax.ops.windows import Tiling

# Dataset option -> the output option it needs.
_OUTPUT_OF = {"sidd_bench": "submission", "input": "output", "dnd": "submission_dir"}


def _int_in(low: int, high: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer in low..high (high None: no upper bound)."""

    def parse(text: str) -> int:
        value = int(text) if text.lstrip("-").isdigit() else None
        if value is None or value < low or (high is not None and value > high):
            bounds = f">= {low}" if high is None else f"in {low}..{high}"
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer {bounds}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Evaluate a checkpoint of any network here (AM-BSN, AP-BSN, MM-BSN, TM-BSN, the students): SIDD "
        "validation scores (the default runs on the embedded demo set), SIDD / DND benchmark submissions, or denoised image files."
    )
    data = p.add_argument_group("what to run on (one of; default: the embedded demo validation set)")
    data.add_argument("--sidd-val", type=Path, metavar="DIR", help="folder of ValidationNoisyBlocksSrgb.mat and ValidationGtBlocksSrgb.mat")
    data.add_argument("--sidd-bench", type=Path, metavar="DIR", help="folder of BenchmarkNoisyBlocksSrgb.mat")
    data.add_argument("--input", type=Path, metavar="PATH", help="an image, or a folder of PNG/JPEG/TIFF/BMP")
    data.add_argument("--dnd", type=Path, metavar="DIR", help="DND sRGB folder (info.mat, images_srgb/)")
    data.add_argument(
        "--check-submission", type=Path, metavar="FILE",
        help="validate a SIDD submission against --sidd-bench DIR; loads no model",
    )  # fmt: skip
    out = p.add_argument_group("outputs")
    out.add_argument("--submission", type=Path, metavar="OUT.csv|OUT.mat", help="SIDD benchmark submission")
    out.add_argument("--output", type=Path, metavar="DIR", help="folder for the denoised <stem>.png files")
    out.add_argument("--submission-dir", type=Path, metavar="OUT", help="folder for the DND .mat files")
    out.add_argument(
        "--overwrite", action="store_true",
        help="--input, --dnd, --sidd-bench: redo every output (by default a rerun keeps those an earlier run "
        "of the same checkpoint and options finished)",
    )  # fmt: skip
    out.add_argument(
        "--report", type=Path, metavar="DIR",
        help="validation and --input: an HTML report (DIR/index.html and its images); DIR must be new, "
        "empty or a previous report, which is replaced",
    )  # fmt: skip
    val = p.add_argument_group("validation")
    val.add_argument("--json", type=Path, metavar="FILE", help="write the report as JSON")
    val.add_argument("--limit", type=_int_in(1), metavar="N", help="score the first N blocks only")
    _add_inference_flags(p.add_argument_group("model and inference"))
    add_cluster_flags(p)
    return p


def _add_inference_flags(inf: argparse._ArgumentGroup) -> None:
    inf.add_argument(
        "--ckpt", type=Path, metavar="CKPT",
        help="Orbax checkpoint directory, training workdir or release .pth (default: the shipped default "
        "weights, a narrow U-Net trained by Noise2Noise on the synthetic demo noise)",
    )  # fmt: skip
    inf.add_argument(
        "--no-tta", action="store_true",
        help="PD-2 pass only, no PD-5 fusion (AM-BSN; AP-BSN and MM-BSN never fuse, as their releases)",
    )  # fmt: skip
    inf.add_argument("--no-r3", action="store_true", help="skip random-replacing refinement")
    inf.add_argument(
        "--self-ensemble", type=_int_in(1), nargs="?", const=8, metavar="N",
        help="average over N rotations / flips: 1, 2 (with the half turn), 4 (the rotations) or 8 (no N: 8); "
        "default: the checkpoint's metadata's, else one pass",
    )  # fmt: skip
    inf.add_argument(
        "--precision", choices=PRECISIONS,
        help="of the convolutions: highest (float32), tf32 or bf16 (GPU tensor cores; slow on CPUs); "
        "default tf32 on GPUs, as PyTorch runs the releases there, highest elsewhere. PSNR cost in bench/NOTES.md",
    )  # fmt: skip
    inf.add_argument(
        "--winograd", action="store_true",
        help="3x3 convolutions by Winograd's algorithm on CPUs (opt-in: see bench/NOTES.md; default XLA's)",
    )  # fmt: skip
    inf.add_argument(
        "--seed", type=_int_in(0, 2**32 - 1), default=0, metavar="N",
        help="R3 randomness; an item's draws depend only on this and its index (default 0)",
    )  # fmt: skip
    inf.add_argument("--batch", type=_int_in(1), default=Tiling.batch, metavar="N", help="blocks / tiles per device per call (%(default)s)")
    inf.add_argument("--tile", type=_int_in(1), default=Tiling.tile, metavar="PX", help="images, DND: tile side (%(default)s)")
    inf.add_argument("--overlap", type=_int_in(0), default=Tiling.overlap, metavar="PX", help="images, DND: tile overlap (%(default)s)")


def _flag(dest: str) -> str:
    return "--" + dest.replace("_", "-")


def _mode(args: argparse.Namespace) -> str:
    """The run's mode ('demo', 'sidd_val', 'sidd_bench', 'input', 'dnd', 'check'); refuses misfits."""
    datasets = [d for d in ("sidd_val", "sidd_bench", "input", "dnd") if getattr(args, d) is not None]
    if len(datasets) > 1:
        raise UserError(f"give only one of {', '.join(map(_flag, datasets))}")
    mode = "check" if args.check_submission else (datasets[0] if datasets else "demo")
    if mode == "check":
        if args.sidd_bench is None:
            raise UserError("--check-submission needs --sidd-bench DIR, the benchmark it is checked against")
        if args.submission is not None:
            raise UserError("--check-submission checks an existing file; leave out --submission")
    for dataset, output in _OUTPUT_OF.items():
        if getattr(args, output) is not None and mode != dataset:
            raise UserError(f"{_flag(output)} goes with {_flag(dataset)} only")
        if mode == dataset and getattr(args, output) is None:
            raise UserError(f"{_flag(dataset)} needs {_flag(output)}, where the results go")
    if args.overwrite and mode not in _OUTPUT_OF:
        raise UserError("--overwrite applies to --input, --dnd and --sidd-bench only")
    for option in ("json", "limit"):
        if getattr(args, option) is not None and mode not in ("demo", "sidd_val"):
            raise UserError(f"{_flag(option)} applies to validation (--sidd-val or the demo set) only")
    if args.report is not None:
        if mode not in ("demo", "sidd_val", "input"):
            raise UserError("--report applies to validation (--sidd-val or the demo set) and --input only")
        from ambsn_jax.evaluation.report import check_out_dir

        # Before the work, not after: a refused folder costs nothing.
        check_out_dir(args.report, keep=[p for p in (args.input, args.output) if p is not None])
    if args.overlap >= args.tile:
        raise UserError(f"--overlap {args.overlap}: must be below --tile {args.tile}")
    for option in ("output", "submission_dir"):
        target = getattr(args, option)
        if target is not None and target.exists() and not target.is_dir():
            raise UserError(f"{_flag(option)} {target}: is a file; {_flag(option)} must be a folder (it is made if missing)")
    return mode


def _checkpoint(args: argparse.Namespace):
    """The weights the run uses, said once on stderr (with a warning for the demo weights)."""
    from ambsn_jax.checkpoint.store import DEFAULT_WEIGHTS, load_checkpoint

    checkpoint = load_checkpoint(args.ckpt or DEFAULT_WEIGHTS)
    if not _lead():
        return checkpoint
    step = "" if checkpoint.step is None else f", step {checkpoint.step}"
    config = checkpoint.meta.network_config()
    print(
        f"weights: {checkpoint.path}{step} ({checkpoint.meta.architecture.display_name}, C={config.base_ch})",
        file=sys.stderr,
    )
    if args.ckpt is None:
        print(
            "note: no --ckpt given, so these are the shipped demo weights: a small network trained on the "
            "synthetic demo noise alone, which smooths real photos and shifts their colours. For real images, convert "
            "the official weights (README, 'Official weights') and pass --ckpt.",
            file=sys.stderr,
        )
    return checkpoint


def _denoiser(args: argparse.Namespace, checkpoint: Any, own_files: bool = False):
    """The compiled inference the switches ask for, bound to the checkpoint's parameters: over
    every device of every process, or over this process's (`own_files`: each process works on
    its own share of the files)."""
    from ambsn_jax import mesh as meshlib
    from ambsn_jax.inference.denoiser import BatchDenoiser

    cfg = _inference_config(args, checkpoint)
    mesh = meshlib.local_mesh() if own_files else meshlib.make_mesh()
    return BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, cfg, mesh).bind(checkpoint.params)


def _inference_config(args: argparse.Namespace, checkpoint: Any):
    from ambsn_jax.inference.release import default_inference

    given = {"precision": args.precision, "self_ensemble": args.self_ensemble}
    switches = {k: v for k, v in given.items() if v is not None}
    return default_inference(checkpoint.meta, tta=not args.no_tta, r3=not args.no_r3, winograd=args.winograd, **switches)


def _tiling(args: argparse.Namespace) -> Tiling:
    return Tiling(tile=args.tile, overlap=args.overlap, batch=args.batch)


def _resume_options(args: argparse.Namespace, checkpoint: Any, **extra: Any) -> dict[str, Any]:
    from ambsn_jax.evaluation.folder import resume_options

    return resume_options(checkpoint, _inference_config(args, checkpoint), args.seed, _tiling(args), **extra)


def _score_validation_set(args: argparse.Namespace, root: Path | None) -> int:
    from ambsn_jax.data.demo import demo_root
    from ambsn_jax.evaluation import sidd

    root = demo_root() if root is None else root
    noisy, clean = sidd.load_validation(root)  # a wrong folder fails at once, not after loading a checkpoint
    checkpoint = _checkpoint(args)
    cfg = _inference_config(args, checkpoint)
    keep = args.report is not None
    result = sidd.evaluate_validation(checkpoint, root, cfg, args.seed, args.batch, args.limit, keep_outputs=keep)
    if not _lead():
        return 0  # every process computed the same report; the first writes it
    denoised = result.pop("denoised", None)
    print(sidd.summary_line(result))
    if args.json is not None:
        sidd.write_json(args.json, result)
    if denoised is not None:
        from ambsn_jax.evaluation import report

        scored = slice(len(denoised))
        page = report.write_validation_report(
            args.report, {k: v for k, v in result.items() if k != "blocks"}, result["blocks"],
            noisy.reshape(-1, *noisy.shape[2:])[scored], denoised, clean.reshape(-1, *clean.shape[2:])[scored],
        )  # fmt: skip
        print(f"wrote {page}")
    return 0


def _benchmark(args: argparse.Namespace) -> int:
    from ambsn_jax.evaluation import sidd, submission

    submission.check_suffix(args.submission)  # before hours of denoising, not after
    from ambsn_jax.evaluation.resume import PartialBlocks, fingerprint

    noisy = sidd.load_benchmark(args.sidd_bench)
    checkpoint = _checkpoint(args)
    denoiser = _denoiser(args, checkpoint)
    n = noisy.shape[0] * noisy.shape[1]
    source = fingerprint(0, args.sidd_bench / sidd.BENCHMARK_NOISY)
    options = _resume_options(args, checkpoint, benchmark=source, shape=list(noisy.shape), call=sidd.call_size(denoiser, n, args.batch))
    partial = PartialBlocks(args.submission, options, args.overwrite)
    denoised = sidd.denoise_benchmark(denoiser, noisy, args.seed, args.batch, partial)
    if not _lead():
        return 0
    submission.write_submission(args.submission, denoised)
    partial.remove()
    print(
        f"wrote {args.submission}: {n} blocks ({partial.reused} of {-(-n // options['call'])} calls reused from an "
        "earlier run; --overwrite redoes them)"
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from ambsn_jax.evaluation import sidd, submission

    shape = sidd.load_benchmark(args.sidd_bench).shape
    submission.read_submission(args.check_submission, shape)
    block = "x".join(map(str, shape[2:]))
    print(f"ok: {args.check_submission} holds the {shape[0] * shape[1]} blocks of {block} uint8")
    return 0


def _images(args: argparse.Namespace) -> int:
    from ambsn_jax import mesh as meshlib
    from ambsn_jax.data.images import list_images
    from ambsn_jax.evaluation import folder

    from ambsn_jax.evaluation.resume import Resume

    outputs = folder.output_paths(list_images(args.input), args.output)
    checkpoint = _checkpoint(args)
    denoiser = _denoiser(args, checkpoint, own_files=True)
    resume = Resume(args.output, _resume_options(args, checkpoint), args.overwrite)
    try:
        failures = folder.denoise_files(denoiser, outputs, args.seed, _tiling(args), resume)
    finally:
        resume.close()
    for failure in failures:
        print(f"error: {distributed.speaker()}{failure}", file=sys.stderr)
    failed = meshlib.total(len(failures))
    reused = meshlib.total(resume.reused)
    if not _lead():
        return 1 if failures else 0
    print(
        f"wrote {len(outputs) - failed} of {len(outputs)} images to {args.output} "
        f"({reused} reused from an earlier run; --overwrite redoes them)"
    )
    if args.report is not None:
        from ambsn_jax.evaluation import report
        from ambsn_jax.evaluation.common import checkpoint_record

        summary = {
            "input": str(args.input), "output": str(args.output), "denoised": len(outputs) - failed,
            "failed": failed, "options": {"seed": args.seed, **_inference_config(args, checkpoint).release_options(),
            "tile": args.tile, "overlap": args.overlap}, "checkpoint": checkpoint_record(checkpoint),
        }  # fmt: skip
        pairs = [(source.name, source, target) for source, target in outputs.items()]
        print(f"wrote {report.write_folder_report(args.report, pairs, summary)}")
    return 1 if failed else 0


def _dnd(args: argparse.Namespace) -> int:
    from ambsn_jax.evaluation import dnd

    boxes = dnd.read_boxes(args.dnd)  # before the model loads: a wrong folder fails at once
    from ambsn_jax import mesh as meshlib
    from ambsn_jax.evaluation.resume import Resume

    checkpoint = _checkpoint(args)
    denoiser = _denoiser(args, checkpoint, own_files=True)
    out = args.submission_dir
    resume = Resume(out, _resume_options(args, checkpoint), args.overwrite)
    try:
        dnd.denoise_dnd(denoiser, args.dnd, boxes, out, args.seed, _tiling(args), resume)
    finally:
        resume.close()
    reused = meshlib.total(resume.reused)
    if _lead():
        print(
            f"wrote {sum(map(len, boxes))} boxes to {out} ({reused} reused from an earlier run; "
            f"--overwrite redoes them); upload {out / 'bundled'}"
        )
    return 0


def _lead() -> bool:
    import jax

    return jax.process_index() == 0


def _evaluate(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    mode = _mode(args)
    settings = cluster_settings(args)
    enable_compilation_cache()
    if mode in ("demo", "sidd_val"):
        return distributed.run(settings, lambda: _score_validation_set(args, args.sidd_val))
    run = {"sidd_bench": _benchmark, "check": _check, "input": _images, "dnd": _dnd}[mode]
    # Processes started as for training (--coordinator, JAX_COORDINATOR_ADDRESS, ...) join first.
    return distributed.run(settings, lambda: run(args))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (default: sys.argv[1:]); returns the exit status.

    It wraps itself in `run_cli` because a console script calls `main()` bare.
    """
    return run_cli(_evaluate, argv)
