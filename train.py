"""Train AM-BSN: `python train.py --help`. The work is in `ambsn_jax.train`."""

import sys

from ambsn_jax.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
