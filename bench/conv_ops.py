"""One convolution of the training step's shape, op by op: PyTorch (oneDNN), XLA:CPU's own,
and `ambsn_jax.conv` (what the network runs).

    python bench/conv_ops.py [--repeats N]

Shape: batch 8, 130 x 130 (a PD-5 training crop with its padding), 128 channels in and out.
Ops: forward, gradient with respect to the input (dx) and to the kernel (dw); seconds, medians
after a first call. Each framework runs in its own process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import numpy as np


N, S, C = 8, 130, 128
CONVS = [(3, 2), (5, 1), (1, 1)]  # (kernel size, dilation): the network's kinds


def _median(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def run_torch(repeats: int) -> None:
    import torch
    from torch.nn.grad import conv2d_input, conv2d_weight

    torch.set_num_threads(os.cpu_count() or 1)  # as bench.py
    x, g = torch.rand(N, C, S, S), torch.rand(N, C, S, S)
    for k, d in CONVS:
        w, p = torch.rand(C, C, k, k), d * (k // 2)
        ops = {
            "forward": lambda: torch.nn.functional.conv2d(x, w, padding=p, dilation=d),
            "dx": lambda: conv2d_input(x.shape, w, g, padding=p, dilation=d),
            "dw": lambda: conv2d_weight(x, w.shape, g, padding=p, dilation=d),
        }
        _report("pytorch", k, d, {name: _median(op, repeats) for name, op in ops.items()})


def run_jax(repeats: int) -> None:
    import jax
    import jax.numpy as jnp

    from ambsn_jax.ops.conv import conv_general_dilated

    x = jnp.asarray(np.random.rand(N, S, S, C), jnp.float32)
    g = jnp.asarray(np.random.rand(N, S, S, C), jnp.float32)
    for name, conv in [("xla", jax.lax.conv_general_dilated), ("ambsn_jax", conv_general_dilated)]:
        for k, d in CONVS:
            w, p = jnp.asarray(np.random.rand(k, k, C, C), jnp.float32), d * (k // 2)

            def f(x, w, conv=conv, p=p, d=d):
                dims = ("NHWC", "HWIO", "NHWC")
                return conv(x, w, (1, 1), [(p, p), (p, p)], rhs_dilation=(d, d), dimension_numbers=dims)

            fns = {
                "forward": jax.jit(f),
                "dx": jax.jit(lambda x, w, f=f: jax.vjp(lambda x: f(x, w), x)[1](g)[0]),
                "dw": jax.jit(lambda x, w, f=f: jax.vjp(lambda w: f(x, w), w)[1](g)[0]),
            }
            times = {op: _median(lambda fn=fn: fn(x, w).block_until_ready(), repeats) for op, fn in fns.items()}
            _report(name, k, d, times)


def _report(name: str, k: int, d: int, times: dict[str, float]) -> None:
    flops = 2 * N * S * S * C * C * k * k
    cells = "  ".join(f"{op} {t:.3f} s ({flops / t / 1e9:5.0f} GFLOP/s)" for op, t in times.items())
    print(f"{name:10s} {k}x{k} dilation {d}: {cells}", flush=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--framework", choices=["torch", "jax"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.framework:
        (run_torch if args.framework == "torch" else run_jax)(args.repeats)
        return 0
    for fw in ["torch", "jax"]:
        subprocess.run([sys.executable, __file__, "--framework", fw, "--repeats", str(args.repeats)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
