"""Train a denoiser: `python train.py --help`. The work is in `ambsn_jax.train`."""

import sys

from ambsn_jax.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
