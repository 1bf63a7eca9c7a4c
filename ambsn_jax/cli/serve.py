"""`ambsn-serve`: a checkpoint behind an HTTP API (POST /v1/denoise) and a web page at /.

Loads the weights once, compiles in the background (GET /readyz answers 503 until done), then
serves on every device of the machine. Exit status 2 for a bad command line or checkpoint.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from ambsn_jax.cli.common import ArgumentParser, enable_compilation_cache, run_cli
from ambsn_jax.cli.evaluate import _int_in
from ambsn_jax.errors import UserError
from ambsn_jax.ops.precision import PRECISIONS
from ambsn_jax.ops.windows import Tiling
from ambsn_jax.serve.limits import Limits

TOKEN_ENV = "AMBSN_SERVE_TOKEN"
_LOOPBACK = ("127.0.0.1", "localhost", "::1")


def build_parser() -> argparse.ArgumentParser:
    p = ArgumentParser(description="Serve a denoising checkpoint over HTTP: POST /v1/denoise, a web page at /, /metrics.")
    p.add_argument("--ckpt", type=Path, metavar="CKPT", help="Orbax checkpoint, training workdir or release .pth (default: the library's default weights)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (%(default)s: this machine only)")
    p.add_argument("--port", type=_int_in(0, 65535), default=8000, help="(%(default)s)")
    p.add_argument("--token", help=f"require 'Authorization: Bearer TOKEN' on all but /, /healthz, /readyz (default: ${TOKEN_ENV}, else none)")
    lim = p.add_argument_group("limits")
    lim.add_argument("--max-bytes", type=_int_in(1), default=Limits.max_bytes, metavar="N", help="request body (%(default)s)")
    lim.add_argument("--max-pixels", type=_int_in(1), default=Limits.max_pixels, metavar="N", help="width x height (%(default)s)")
    lim.add_argument("--queue", type=_int_in(1), default=Limits.max_queue, metavar="N", help="images waiting; more get 503 (%(default)s)")
    lim.add_argument(
        "--max-batch", type=_int_in(1), metavar="N",
        help=f"same-shape images per network call, 1: no batching (default: 1 on a CPU, where it measured no "
        f"faster, docs/serve.md; {Limits.max_batch} on GPUs and TPUs)",
    )  # fmt: skip
    lim.add_argument("--timeout", type=_int_in(1), default=int(Limits.timeout_s), metavar="S", help="seconds per request; later: 504 (%(default)s)")
    inf = p.add_argument_group("inference (as evaluate.py's)")
    inf.add_argument("--no-tta", action="store_true", help="PD-2 pass only (AM-BSN)")
    inf.add_argument("--no-r3", action="store_true", help="skip random-replacing refinement")
    inf.add_argument(
        "--self-ensemble", type=_int_in(1), nargs="?", const=8, metavar="N",
        help="average over N rotations / flips: 1, 2 (with the half turn), 4 (the rotations) or 8 (no N: 8); "
        "default: the checkpoint's metadata's, else one pass",
    )  # fmt: skip
    inf.add_argument("--precision", choices=PRECISIONS, help="of the convolutions (default: the platform's)")
    inf.add_argument("--tile", type=_int_in(1), default=Tiling.tile, metavar="PX", help="tile side (%(default)s)")
    inf.add_argument("--overlap", type=_int_in(0), default=Tiling.overlap, metavar="PX", help="tile overlap (%(default)s)")
    inf.add_argument("--batch", type=_int_in(1), default=Tiling.batch, metavar="N", help="tiles per device per call (%(default)s)")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Runs until interrupted. It wraps itself in `run_cli` because a console script calls `main()` bare."""
    return run_cli(_serve, argv)


def _serve(argv: Sequence[str] | None) -> int:
    args = build_parser().parse_args(argv)
    if args.overlap >= args.tile:
        raise UserError(f"--overlap {args.overlap}: must be below --tile {args.tile}")
    token = args.token or os.environ.get(TOKEN_ENV) or None
    if args.host not in _LOOPBACK and token is None:
        print(f"warning: listening on {args.host} without a token: anyone who reaches it can use it (--token)", file=sys.stderr)
    enable_compilation_cache()
    import jax
    import uvicorn

    from ambsn_jax import api
    from ambsn_jax.serve.app import create_app

    tiling = Tiling(tile=args.tile, overlap=args.overlap, batch=args.batch)
    switches = {} if args.precision is None else {"precision": args.precision}
    model = api.load(args.ckpt, tta=not args.no_tta, r3=not args.no_r3, self_ensemble=args.self_ensemble, tiling=tiling, **switches)
    print(f"weights: {model.checkpoint.path} ({model.checkpoint.meta.architecture.display_name}); compiling, /readyz says when ready", file=sys.stderr)
    max_batch = args.max_batch or (1 if jax.default_backend() == "cpu" else Limits.max_batch)
    limits = Limits(args.max_bytes, args.max_pixels, args.queue, max_batch, float(args.timeout))
    uvicorn.run(create_app(model, limits, token), host=args.host, port=args.port, log_level="info")
    return 0


if __name__ == "__main__":
    sys.exit(main())
