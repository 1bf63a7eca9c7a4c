"""What every command-line tool does with user errors: one `error:` line, no traceback."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

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
