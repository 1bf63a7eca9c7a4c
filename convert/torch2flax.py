"""Convert an official AM-BSN, AP-BSN or MM-BSN `.pth` to Orbax: `python convert/torch2flax.py --help`.

The work is in `ambsn_jax.convert.torch2flax`; this script is the name the release's card uses.
"""

import sys

from ambsn_jax.cli.convert import main

if __name__ == "__main__":
    sys.exit(main())
