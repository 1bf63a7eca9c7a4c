"""Write a checkpoint as the release's `.pth`: `python convert/flax2torch.py --help`. The work is in `ambsn_jax.convert`."""

import sys

from ambsn_jax.cli.convert import main_flax2torch

if __name__ == "__main__":
    sys.exit(main_flax2torch())
