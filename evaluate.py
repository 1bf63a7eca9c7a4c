"""Evaluate a checkpoint: `python evaluate.py --help`. The work is in `ambsn_jax.evaluation`."""

import sys

from ambsn_jax.cli.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
