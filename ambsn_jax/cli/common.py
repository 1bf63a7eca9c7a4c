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
