"""`train.py` / `ambsn-train`: self-supervised training of any network of the family on every
device, resumable.

Exit status: 0 done, 2 bad input (one `error:` line, see `ambsn_jax.cli.common.run_cli`), 128 + N
stopped by signal N (SIGTERM 143, SIGINT 130) after checkpointing: rerun to resume
(docs/troubleshooting.md); 75 another process of a multi-process run was lost (one `error:` line
naming it): rerun to resume from the last complete checkpoint (docs/cluster.md).
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from ambsn_jax import distributed
from ambsn_jax.cli.common import ArgumentParser, add_cluster_flags, cluster_settings, enable_compilation_cache, run_cli

# Command-line flag -> the config key it sets.
_FLAG_KEYS = {"data_dir": "data.dir", "init": "model.init", "seed": "seed", "max_steps": "train.max_steps", "save_every": "checkpoint.every"}


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(
        description="Train AM-BSN on noisy images alone. Rerunning the same command resumes the run in its workdir."
    )
    p.add_argument("--config", default="sidd", help="a config shipped in ambsn_jax/configs (demo, sidd, ...) or a .yaml path (default: sidd)")
    p.add_argument("--data-dir", help='SIDD_Medium_Srgb, any folder of noisy images, or "demo"')
    p.add_argument("--workdir", type=Path, help="checkpoints, logs and eval.json (default: runs/CONFIG)")
    p.add_argument("--seed", type=int)
    p.add_argument("--init", metavar="CKPT", help="fine-tune this checkpoint (Orbax dir, workdir or .pth) instead of a random init")
    p.add_argument("--max-steps", type=int, metavar="N", help="stop after N steps (the schedule keeps its length)")
    p.add_argument("--save-every", type=int, metavar="N", help="checkpoint (and validate) every N steps")
    p.add_argument("--set", dest="overrides", nargs="+", action="extend", default=[], metavar="KEY=VALUE",
                   help="override any config value, e.g. --set optim.lr=1e-4 model.base_ch=64")  # fmt: skip
    add_cluster_flags(p)
    return p


def _train(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    # Imported once the arguments parse: JAX and the package take seconds to import.
    from ambsn_jax.train import config as configlib
    from ambsn_jax.train.loop import train

    overrides = [(key.split("."), getattr(args, flag)) for flag, key in _FLAG_KEYS.items() if getattr(args, flag) is not None]
    overrides += [configlib.parse_override(item) for item in args.overrides]
    cfg = configlib.resolve(args.config, overrides)
    settings = cluster_settings(args)
    enable_compilation_cache()
    # Joining a multi-process run comes before anything touches a device.
    return distributed.run(settings, lambda: train(cfg, args.workdir or Path("runs") / cfg.name))


def main(argv: Sequence[str] | None = None) -> int:
    """Runs the command line `argv` (default: sys.argv[1:]); returns the exit status."""
    return run_cli(_train, argv)
