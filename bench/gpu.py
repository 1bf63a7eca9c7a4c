"""The GPU checks, in one run (`bench/gpu.sh` starts it on a machine with a GPU; about 6 minutes
on one H200). Writes one JSON with:

- parity: the converter's check (JAX against the PyTorch reference, bsn / PD-2 / PD-5) at full
  float32, then the JAX model at tf32 and bf16 against its own float32 output;
- psnr: the shipped demo weights on the demo validation set at each precision (the change
  against float32 is what tf32 / bf16 cost);
- bench: `bench/bench.py`'s forward, inference and train-step cases, JAX against the PyTorch
  reference on the same GPU (when CUDA torch is installed);
- r3: the default inference of one 256 block with R3's passes in turn and as one batch;
- sidd: SIDD-validation-sized throughput (256 x 256 blocks, the default inference), blocks per
  second and the time 1,280 blocks would take.

`--smoke` runs every part at a tiny size, for checking the script itself on a CPU.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
from bench import _timed  # bench/bench.py, beside this script

ROOT = Path(__file__).resolve().parents[1]


def _parity(width: int, side: int) -> dict:
    import torch

    from ambsn_jax.checkpoint.meta import CheckpointMeta
    from ambsn_jax.checkpoint.store import Checkpoint
    from ambsn_jax.checkpoint import torch_port
    from ambsn_jax.convert.reference import ReleaseDenoiser, twin_of
    from ambsn_jax.convert.verify import max_abs_diffs
    from ambsn_jax.inference.release import pd_forward
    from ambsn_jax.nets import registry
    from ambsn_jax.ops.precision import convolutions_in, with_precision

    record = registry.get("ambsn")
    torch.manual_seed(0)
    sd = {k: v.numpy() for k, v in ReleaseDenoiser(bsn=twin_of(record.config(base_ch=width))).state_dict().items()}
    params, cfg = torch_port.params_from_state_dict(sd)
    converted = Checkpoint(params, CheckpointMeta.for_release("ambsn", cfg, source="random"), Path("."), None)
    model = converted.module()
    out = {"highest_vs_reference": max_abs_diffs(model, sd)}
    x = jax.numpy.asarray(np.random.default_rng(0).uniform(0, 255, (1, side, side, 3)), jax.numpy.float32)
    with convolutions_in("highest"):
        ref = np.asarray(pd_forward(model, x, 2))
    for name in ("tf32", "bf16"):
        net = with_precision(converted.module(), name)  # a fresh module: bf16 changes its convolutions
        with convolutions_in(name):
            got = np.asarray(pd_forward(net, x, 2))
        out[f"{name}_vs_highest_pd2"] = float(np.max(np.abs(got - ref)))
    return out


def _psnr(limit: int | None) -> dict:
    from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT, load_checkpoint
    from ambsn_jax.data.demo import demo_root
    from ambsn_jax.evaluation import sidd
    from ambsn_jax.inference.release import default_inference

    ckpt = load_checkpoint(DEMO_CHECKPOINT)
    out = {}
    for name in ("highest", "tf32", "bf16"):
        report = sidd.evaluate_validation(ckpt, demo_root(), default_inference(ckpt.meta, precision=name), limit=limit)
        out[name] = {"psnr": report["psnr"], "ssim": report["ssim"]}
    for name in ("tf32", "bf16"):
        out[f"{name}_psnr_change"] = out[name]["psnr"] - out["highest"]["psnr"]
    return out


def _denoiser(width: int, **switches):
    from ambsn_jax.checkpoint.meta import CheckpointMeta
    from ambsn_jax.checkpoint.store import params_of
    from ambsn_jax.inference.denoiser import BatchDenoiser
    from ambsn_jax.inference.release import default_inference
    from ambsn_jax.nets import registry

    model = registry.build("ambsn", {"base_ch": width})
    meta = CheckpointMeta.for_release("ambsn", model.config, source="random")
    cfg = default_inference(meta, **switches)
    return BatchDenoiser("ambsn", model.config, cfg).bind(params_of(model))


def _blocks(n: int, side: int):
    x = np.random.default_rng(0).uniform(0, 255, (n, side, side, 3)).astype(np.float32)
    return x, jax.random.split(jax.random.key(0), n)


def _r3(width: int, side: int, repeats: int) -> dict:
    x, keys = _blocks(1, side)
    return {
        name: _timed(lambda d=_denoiser(width, r3_batched=batched): d(x, keys), repeats)
        for name, batched in (("in_turn", False), ("one_batch", True))
    }


def _sidd(width: int, side: int, per_call: int, repeats: int) -> dict:
    d = _denoiser(width)
    x, keys = _blocks(per_call * d.devices, side)
    r = _timed(lambda: d(x, keys), repeats)
    rate = len(x) / r["median_s"]
    return {**r, "blocks_per_call": len(x), "blocks_per_s": rate, "sidd_1280_blocks_s": 1280 / rate}


def _bench(repeats: int, out: Path) -> dict:
    cases = ["matmul", "forward256", "denoise256", "train_step"]
    cmd = [sys.executable, str(ROOT / "bench" / "bench.py"), "--arch", "ambsn", "--only", *cases, "--repeats", str(repeats), "--json", str(out)]
    subprocess.run(cmd, check=False)
    return json.loads(out.read_text()) if out.is_file() else {"error": "bench.py wrote nothing"}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--json", type=Path, required=True)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, to check the script on a CPU")
    args = ap.parse_args()
    width, side, repeats = (8, 40, 1) if args.smoke else (128, 256, 3)
    result: dict = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()], "smoke": args.smoke}
    parts = {
        "parity": lambda: _parity(width, 40),
        "psnr": lambda: _psnr(4 if args.smoke else None),
        "r3": lambda: _r3(width, side, repeats),
        "sidd": lambda: _sidd(width, side, 1 if args.smoke else 8, repeats),
        "bench": (lambda: {"skipped": "smoke"}) if args.smoke else (lambda: _bench(2, args.json.with_name("bench.json"))),
    }
    failed = False
    for name, part in parts.items():
        t0 = time.perf_counter()
        try:
            result[name] = part()
        except Exception as e:  # one part failing must not lose the others' numbers
            result[name] = {"error": f"{type(e).__name__}: {e}"}
            failed = True
        print(f"{name}: {time.perf_counter() - t0:.1f} s {json.dumps(result[name])[:400]}", flush=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
