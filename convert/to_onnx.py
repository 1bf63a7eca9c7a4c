"""Write a checkpoint as ONNX graphs: `python convert/to_onnx.py --help`. The work is in `ambsn_jax.convert`."""

import sys

from ambsn_jax.cli.convert import main_onnx

if __name__ == "__main__":
    sys.exit(main_onnx())
