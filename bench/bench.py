"""JAX vs the PyTorch reference of the release, side by side on this machine.

    python bench/bench.py [--json bench/results.json] [--only NAME ...] [--repeats N]

Each case runs in its own subprocess so that its peak memory (max RSS) is its own. Times are
medians over `--repeats` runs after a warm-up call; the warm-up of a JAX case is its compile
time (plus one run). GFLOP/s counts 7.8 MFLOP per input pixel per bsn forward (3x that for a
training step: forward and backward).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run from a checkout without installing convert/

MFLOP_PER_PIXEL = 7.8
CASES = ["matmul", "forward256", "forward264", "denoise256", "train_step"]
FRAMEWORKS = ["jax", "torch"]


def _timed(fn, repeats: int) -> dict:
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"first_call_s": first, "median_s": statistics.median(times), "runs_s": times}


def _bsn_pixels(case: str) -> tuple[int, float]:
    """Input side and total bsn-forward pixels of a case (PD pads enlarge the input)."""
    if case.startswith("forward"):
        side = int(case[len("forward"):])
        return side, side * side
    # Full default inference of a 256 block: PD-2 pass on 264^2, PD-5 pass on 260 -> 280^2
    # (padded to 260 then +2*5*2), and 8 R3 passes on 260^2.
    return 256, 264**2 + 280**2 + 8 * 260**2


def run_jax(case: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ambsn_jax.inference import Denoiser, InferenceConfig
    from ambsn_jax.model import AMBSN

    if case == "matmul":
        a = jnp.asarray(np.random.rand(4096, 4096), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        r = _timed(lambda: f(a).block_until_ready(), repeats)
        r["gflops"] = 2 * 4096**3 / r["median_s"] / 1e9
        return r
    model = AMBSN(rngs=nnx.Rngs(0))
    if case == "train_step":
        r = _timed(_jax_train_step(), repeats)
        r["gflops"] = 3 * MFLOP_PER_PIXEL * 8 * 130**2 * 1e6 / r["median_s"] / 1e9
        return r
    side, pixels = _bsn_pixels(case)
    x = jnp.asarray(np.random.RandomState(0).uniform(0, 255, (1, side, side, 3)), jnp.float32)
    if case.startswith("forward"):
        graphdef, state = nnx.split(model)
        f = jax.jit(lambda s, x: nnx.merge(graphdef, s)(x))
        r = _timed(lambda: f(state, x).block_until_ready(), repeats)
    else:
        den = Denoiser(model, InferenceConfig())
        key = jax.random.key(0)
        r = _timed(lambda: den(x, key).block_until_ready(), repeats)
    r["gflops"] = MFLOP_PER_PIXEL * pixels * 1e6 / r["median_s"] / 1e9
    return r


def _jax_train_step():
    """One call = one Adam step of the release's recipe (config `sidd`) on a fixed batch."""
    from functools import partial

    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ambsn_jax.model import AMBSN
    from ambsn_jax.train import config as configlib
    from ambsn_jax.train.step import init_state, lr_schedule, optimizer, train_step

    cfg = configlib.resolve("sidd", [(["data", "dir"], "demo")])  # the recipe wants a data folder
    schedule = lr_schedule(cfg.optim, steps_per_epoch=1000)
    tx = optimizer(cfg.optim, schedule)

    def new_model():
        return AMBSN(rngs=nnx.Rngs(0))

    graphdef = nnx.graphdef(nnx.eval_shape(new_model))
    state = [jax.jit(partial(init_state, new_model, tx, 0))()]
    step = jax.jit(partial(train_step, graphdef, tx, schedule, cfg.train), donate_argnums=0)
    batch = jnp.asarray(np.random.RandomState(0).uniform(0, 255, (8, 120, 120, 3)), jnp.float32)

    def run():
        state[0], metrics = step(state[0], batch)
        metrics["loss"].block_until_ready()

    return run


def run_torch(case: str, repeats: int) -> dict:
    import torch

    from convert.reference import Denoiser

    torch.set_num_threads(os.cpu_count() or 1)
    if case == "matmul":
        a = torch.rand(4096, 4096)
        r = _timed(lambda: a @ a, repeats)
        r["gflops"] = 2 * 4096**3 / r["median_s"] / 1e9
        return r
    torch.manual_seed(0)
    net = Denoiser()
    if case == "train_step":
        opt = torch.optim.Adam(net.parameters(), lr=2e-4)
        x = torch.rand(8, 3, 120, 120) * 255

        def step():
            opt.zero_grad()
            loss = torch.nn.functional.l1_loss(net(x, 5), x)
            loss.backward()
            opt.step()

        r = _timed(step, repeats)
        r["gflops"] = 3 * MFLOP_PER_PIXEL * 8 * 130**2 * 1e6 / r["median_s"] / 1e9
        return r
    side, pixels = _bsn_pixels(case)
    x = torch.rand(1, 3, side, side) * 255
    with torch.no_grad():
        fn = (lambda: net.bsn(x)) if case.startswith("forward") else (lambda: net.denoise(x))
        r = _timed(fn, repeats)
    r["gflops"] = MFLOP_PER_PIXEL * pixels * 1e6 / r["median_s"] / 1e9
    return r


def _child(case: str, framework: str, repeats: int) -> None:
    r = (run_jax if framework == "jax" else run_torch)(case, repeats)
    r["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(r))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*", choices=CASES, default=CASES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, default=ROOT / "bench" / "results.json")
    ap.add_argument("--child", nargs=2, metavar=("CASE", "FRAMEWORK"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child, args.repeats)
        return 0
    results = {}
    for case in args.only:
        for fw in FRAMEWORKS:
            out = subprocess.run(
                [sys.executable, __file__, "--child", case, fw, "--repeats", str(args.repeats)],
                capture_output=True, text=True, check=True,
            )  # fmt: skip
            results[f"{case}/{fw}"] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[f"{case}/{fw}"]
            print(f"{case:12s} {fw:6s} median {r['median_s']:8.3f} s  first {r['first_call_s']:8.2f} s  "
                  f"{r['gflops']:7.1f} GFLOP/s  peak {r['peak_rss_mib']:7.0f} MiB", flush=True)  # fmt: skip
    ceiling = results.get("matmul/jax", {}).get("gflops")
    table = []
    for case in args.only:
        if case == "matmul" or f"{case}/jax" not in results:
            continue
        j, t = results[f"{case}/jax"], results[f"{case}/torch"]
        row = {"case": case, "jax_s": j["median_s"], "torch_s": t["median_s"],
               "speedup": t["median_s"] / j["median_s"], "jax_gflops": j["gflops"],
               "ceiling_share": j["gflops"] / ceiling if ceiling else None,
               "jax_compile_s": j["first_call_s"] - j["median_s"]}  # fmt: skip
        table.append(row)
    print(f"\n{'case':12s} {'jax s':>9s} {'torch s':>9s} {'speedup':>8s} {'GFLOP/s':>8s} {'of matmul':>9s} {'compile s':>9s}")
    for r in table:
        share = f"{100 * r['ceiling_share']:.0f}%" if r["ceiling_share"] else "-"
        print(f"{r['case']:12s} {r['jax_s']:9.3f} {r['torch_s']:9.3f} {r['speedup']:7.2f}x "
              f"{r['jax_gflops']:8.1f} {share:>9s} {r['jax_compile_s']:9.1f}")  # fmt: skip
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count()}
    args.json.write_text(json.dumps({"machine": machine, "results": results, "table": table}, indent=1))
    print(f"\nwrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
