"""`convert/torch2flax.py` / `ambsn-convert`: an official `.pth` -> a verified Orbax checkpoint.

    python convert/torch2flax.py AMBSN.pth [--out AMBSN_orbax] [--arch ambsn|apbsn|mmbsn]
                                           [--tolerance 5e-3] [--force]
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
