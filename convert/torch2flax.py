"""Convert an official AM-BSN, AP-BSN or MM-BSN `.pth` to Orbax: `python convert/torch2flax.py --help`.

The work is in `ambsn_jax.convert.torch2flax`; this script is the name the release's card uses.
"""

import sys
from pathlib import Path

# Run as `python convert/torch2flax.py`, Python puts convert/ on sys.path, not the checkout's
# root that holds `ambsn_jax` (else an installed copy elsewhere would be imported instead).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ambsn_jax.cli.convert import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
