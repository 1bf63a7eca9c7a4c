"""What every command-line tool does: user errors as one `error:` line, no traceback; compiled
programs kept on disk. Nothing here imports JAX before the arguments are parsed, so `--help`
and argument errors answer at once."""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from ambsn_jax import distributed
from ambsn_jax.errors import UserError


class ArgumentParser(argparse.ArgumentParser):
    """Reports a bad command line as one `error:` line (via UserError), like every other input error."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(f"{message} (see --help)")


def run_cli(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> int:
    """Run `main(argv)`; a UserError becomes `error: <message>` on stderr and exit status 2."""
    # Orbax logs routine notices (e.g. "Given directory is read only") as absl warnings on
    # stderr, which would bury the one `error:` line of a refusal.
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        return main(argv)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def enable_compilation_cache() -> None:
    """Keep compiled programs on disk, so that a rerun skips compiling (2-10 s a network shape
    on a CPU, `bench/NOTES.md`). One cache per machine: XLA:CPU programs are native code for the
    CPU that compiled them. JAX_COMPILATION_CACHE_DIR, when set, decides instead (empty: off).
    Commands call it once their arguments are parsed."""
    if "JAX_COMPILATION_CACHE_DIR" in os.environ:
        return
    import jax

    root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    jax.config.update("jax_compilation_cache_dir", str(root / "ambsn_jax" / "xla" / platform.node()))


def add_cluster_flags(p: argparse.ArgumentParser) -> None:
    """The flags of a multi-process run (`ambsn_jax.distributed`; docs/cluster.md)."""
    g = p.add_argument_group("multi-process runs (every process runs the same command; docs/cluster.md)")
    g.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address (default: JAX_COORDINATOR_ADDRESS, or the cluster's)")
    g.add_argument("--num-processes", type=int, metavar="N", help="processes in the run (default: JAX_NUM_PROCESSES, or the cluster's)")
    g.add_argument("--process-id", type=int, metavar="I", help="this process's index, 0..N-1 (default: JAX_PROCESS_ID, or the cluster's)")
    g.add_argument("--cluster", choices=distributed.CLUSTERS, default="auto",
                   help="auto: join when a coordinator is given or Slurm / Open MPI started several tasks; jax: "
                   "whatever JAX detects (Kubernetes, TPU pods); NAME: that cluster's variables; off: run alone (%(default)s)")  # fmt: skip
    g.add_argument("--join-timeout", type=int, default=distributed.Settings.join_timeout, metavar="S",
                   help="give up (exit 2) when the run is not joined within S seconds (%(default)s)")  # fmt: skip
    g.add_argument("--peer-timeout", type=int, default=distributed.Settings.peer_timeout, metavar="S",
                   help=f"a process silent for S seconds is lost: the others exit {distributed.LOST_PEER} (%(default)s)")  # fmt: skip


def cluster_settings(args: argparse.Namespace) -> distributed.Settings:
    for flag in ("join_timeout", "peer_timeout"):
        if getattr(args, flag) < 1:
            raise UserError(f"--{flag.replace('_', '-')} {getattr(args, flag)}: must be at least 1 second")
    return distributed.Settings(args.coordinator, args.num_processes, args.process_id, args.cluster, args.join_timeout, args.peer_timeout)
