"""Convert an official AM-BSN, AP-BSN or MM-BSN `.pth` to Orbax, then verify it against PyTorch.

    python convert/torch2flax.py AMBSN.pth [--out AMBSN_orbax] [--arch ambsn|apbsn|mmbsn]
                                           [--tolerance 5e-3] [--force]

The file is read as untrusted input (`weights_only`), its architecture told by its keys
(or `--arch`), checked key by key, written beside `--out` under a temporary name, loaded back
and compared with the PyTorch reference of that release on a random input (bsn, PD-2 and
PD-5 forward). Only a checkpoint that passes is renamed to `--out`: a refusal or a failed
check leaves nothing there.
"""

from __future__ import annotations

import argparse
import datetime
import shutil
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

# Run as `python convert/torch2flax.py`, Python puts convert/ on sys.path, not the repo root
# that holds `ambsn_jax` and the `convert` package.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from ambsn_jax import checkpoint, family, torch_port  # noqa: E402
from ambsn_jax.cli import ArgumentParser, run_cli  # noqa: E402
from ambsn_jax.errors import UserError  # noqa: E402
from ambsn_jax.files import sha256_file  # noqa: E402
from ambsn_jax.family import Model  # noqa: E402
from ambsn_jax.inference import pd_forward  # noqa: E402
from ambsn_jax.model import AMBSNConfig  # noqa: E402

# The bound on raw outputs (0..255 scale); float32 vs float64 noise is about 2e-4.
DEFAULT_TOLERANCE = 5e-3
VERIFY_SHAPE = (1, 3, 40, 40)  # NCHW; 40 divides by both PD factors


def default_out(src: Path) -> Path:
    """`AMBSN.pth` -> `AMBSN_orbax` beside it."""
    return src.with_name(f"{src.stem}_orbax")


def max_abs_diffs(model: Model, state_dict: dict[str, np.ndarray], seed: int = 0) -> dict[str, float]:
    """Max abs differences between `model` and the PyTorch reference loaded with `state_dict`.

    Both run the bsn alone, and the PD-2 and PD-5 forward, on one random 0..255 input.
    """
    # Imported here, after read_pth has told a user without torch how to install it.
    import torch

    from convert.reference import Denoiser, release_bsn

    ref = Denoiser(bsn=release_bsn(family.arch_of(model.config), model.config.to_dict()))
    stripped = torch_port.strip_prefixes(state_dict)
    ref.bsn.load_state_dict({k: torch.from_numpy(v) for k, v in stripped.items()}, strict=True)
    x = np.random.default_rng(seed).uniform(0, 255, VERIFY_SHAPE).astype(np.float32)
    xt, xj = torch.from_numpy(x), jnp.asarray(x.transpose(0, 2, 3, 1))
    with torch.no_grad():
        ref_out = {"bsn": ref.bsn(xt), "pd2": ref(xt, pd=2), "pd5": ref(xt, pd=5)}
    # TF32 convolutions on GPUs alone move outputs by ~0.3: compare at full float32.
    with jax.default_matmul_precision("highest"):
        jax_out = {"bsn": model(xj), "pd2": pd_forward(model, xj, 2), "pd5": pd_forward(model, xj, 5)}
    return {
        name: float(np.max(np.abs(np.asarray(jax_out[name]) - ref_out[name].numpy().transpose(0, 2, 3, 1))))
        for name in ref_out
    }


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = ArgumentParser(prog="torch2flax", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", type=Path, help="official .pth (release container or bare state dict)")
    parser.add_argument("--out", type=Path, help="Orbax directory to write (default: NAME_orbax beside the input)")
    parser.add_argument(
        "--arch", choices=list(family.ARCHITECTURES),
        help="the checkpoint's network (default: told by its keys)",
    )  # fmt: skip
    parser.add_argument(
        "--tolerance", type=float, default=DEFAULT_TOLERANCE, help="max abs diff allowed (0..255 scale)"
    )
    parser.add_argument("--force", action="store_true", help="replace an existing --out")
    return parser.parse_args(argv)


def _convert(argv: Sequence[str] | None) -> int:
    args = _parse_args(argv)
    src: Path = args.checkpoint
    out: Path = (args.out or default_out(src)).absolute()
    if out.exists() and not args.force:
        raise UserError(f"{out}: already exists (use --force to replace it)")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out}: exists and is not a directory; refusing to replace it")

    state_dict = torch_port.read_pth(src)
    try:
        model = torch_port.model_from_state_dict(state_dict, args.arch)
    except UserError as e:
        raise UserError(f"{src}: {e}") from e
    arch = family.arch_of(model.config)
    if arch == "ambsn" and model.config != (release := AMBSNConfig(base_ch=model.config.base_ch)):
        # The AM-BSN release hard-codes its blocks and masks (AP-BSN's and MM-BSN's take them
        # from their configs), so its reference could verify nothing else.
        raise UserError(f"{src}: architecture {model.config} is not the release's ({release})")
    meta = checkpoint.model_meta(
        model,
        source=src.name,
        source_sha256=sha256_file(src),
        converted=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    )

    out.parent.mkdir(parents=True, exist_ok=True)
    # Beside --out so that the final rename stays on one file system, hence atomic.
    tmp = out.with_name(f".{out.name}.tmp-{uuid.uuid4().hex[:12]}")
    tmp.mkdir()
    try:
        checkpoint.save_params(tmp, model, meta)
        written, _ = checkpoint.load_model(tmp)
        diffs = max_abs_diffs(written, state_dict)
        print(f"max abs diff vs the PyTorch reference (tolerance {args.tolerance:g}):")
        for name, diff in diffs.items():
            print(f"  {name}: {diff:.3e}")
        # `not <=` so that a NaN fails too.
        failed = [f"{name} by {diff:.3e}" for name, diff in diffs.items() if not diff <= args.tolerance]
        if failed:
            raise UserError(
                f"{src}: verification failed: {', '.join(failed)} > {args.tolerance:g}; nothing written"
            )
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    n_params = sum(v.size for v in jax.tree.leaves(checkpoint.params_dict(written)))
    print(f"converted {src} ({arch}, C={model.config.base_ch}, {n_params:,} parameters) -> {out}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of `ambsn-convert`: user errors become one `error:` line and status 2.

    It wraps itself in `run_cli` because a console script calls `main()` bare.
    """
    return run_cli(_convert, argv)


if __name__ == "__main__":
    sys.exit(main())
