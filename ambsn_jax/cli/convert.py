"""The converters' command lines, each verified before it writes:

    python convert/torch2flax.py AMBSN.pth [--out AMBSN_orbax] [--arch NAME] [--tolerance 5e-3] [--force]
    python convert/flax2torch.py CKPT --out model.pth [--tolerance 5e-3] [--force]
    python convert/to_onnx.py CKPT --out model.onnx [--force]

(installed as `ambsn-convert`, `ambsn-export-pth`, `ambsn-export-onnx`).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ambsn_jax.cli.common import ArgumentParser, run_cli

def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="torch2flax",
        description="Convert an official AM-BSN, AP-BSN or MM-BSN .pth to Orbax, then verify it against PyTorch.",
    )
    parser.add_argument("checkpoint", type=Path, help="official .pth (release container or bare state dict)")
    parser.add_argument("--out", type=Path, help="Orbax directory to write (default: NAME_orbax beside the input)")
    parser.add_argument(
        "--arch", metavar="NAME", help="the checkpoint's network as metadata names it, e.g. ambsn (default: told by its keys)"
    )
    parser.add_argument("--tolerance", type=float, default=5e-3, help="max abs diff allowed, 0..255 scale (%(default)s)")
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser


def _convert(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from ambsn_jax.convert import torch2flax
    from ambsn_jax.nets import registry

    if args.arch is not None:
        registry.get(args.arch)  # an unknown name is refused before the file is read
    out = args.out or torch2flax.default_out(args.checkpoint)
    written = torch2flax.convert(args.checkpoint, out, args.arch, args.tolerance, args.force)
    config = written.meta.network_config()
    n_params = torch2flax.parameter_count(written.params)
    print(f"converted {args.checkpoint} ({written.meta.arch}, C={config.base_ch}, {n_params:,} parameters) -> {written.path}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ambsn-convert`; a console script calls it bare, so it wraps itself in `run_cli`."""
    return run_cli(_convert, argv)


_TOLERANCE_HELP = "max abs diff allowed, 0..255 scale (%(default)s)"


def _export_parser(prog: str, description: str, out_help: str) -> argparse.ArgumentParser:
    parser = ArgumentParser(prog=prog, description=description)
    parser.add_argument("checkpoint", type=Path, help="Orbax checkpoint, training workdir (its best step) or .pth")
    parser.add_argument("--out", type=Path, required=True, help=out_help)
    parser.add_argument("--force", action="store_true", help="replace an existing output")
    return parser


def _flax2torch(argv: Sequence[str] | None) -> int:
    parser = _export_parser(
        "flax2torch", "Write a checkpoint as the release's .pth, verified against its PyTorch network.", ".pth file to write"
    )
    parser.add_argument("--tolerance", type=float, default=5e-3, help=_TOLERANCE_HELP)
    args = parser.parse_args(argv)
    from ambsn_jax.convert import flax2torch

    exported = flax2torch.export_pth(args.checkpoint, args.out, args.force, args.tolerance)
    config = exported.meta.network_config()
    print(f"exported {args.checkpoint} ({exported.meta.arch}, C={config.base_ch}) -> {args.out}")
    return 0


def main_flax2torch(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ambsn-export-pth` (`convert/flax2torch.py`)."""
    return run_cli(_flax2torch, argv)


def _to_onnx(argv: Sequence[str] | None) -> int:
    parser = _export_parser(
        "to_onnx",
        "Write a checkpoint as two ONNX graphs (the network; its PD inference without R3), checked in onnxruntime.",
        "network graph to write; NAME_denoise.onnx (the PD inference) goes beside it",
    )
    args = parser.parse_args(argv)
    from ambsn_jax.convert import onnx_export

    onnx_export.export_onnx(args.checkpoint, args.out, args.force)
    print(f"exported {args.checkpoint} -> {args.out} (network), {onnx_export.denoise_graph_path(args.out)} (PD inference, R3 off)")
    return 0


def main_onnx(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ambsn-export-onnx` (`convert/to_onnx.py`)."""
    return run_cli(_to_onnx, argv)
