"""Lower the release inference and the training step for GPUs and TPUs on any machine, and count
what the StableHLO holds.

    python bench/lower.py [--platform cuda tpu] [--arch ambsn apbsn mmbsn] [--width 128]

`jax.export` lowers for the named platforms and computes nothing: no GPU or TPU is needed, the
weights stay abstract, and the real width costs only tracing time. Programs, per architecture:
- infer: `default_inference` of the architecture (AM-BSN: TTA + R3; AP-BSN, MM-BSN: R3) on a
  1 x 256 x 256 x 3 block, the program `BatchDenoiser` compiles, on one device;
- train: the training step (forward, backward, Adam) of the architecture's release config
  (ambsn_jax/configs: sidd, apbsn_sidd, mmbsn_sidd), batch 8, 120 x 120 crops, at `--width`.
Each is lowered for every platform alone and, given several, for all of them together (one
module that picks its platform when compiled).

Per row: convolutions (`stablehlo.convolution`), matrix products (`dot_general`), while loops
(R3's `lax.map`; on cpu also the tap-wise kernel gradient of ambsn_jax.ops.conv, one scan per
k x k convolution), collectives, custom calls with their targets, and the module's size (its
text, and its StableHLO bytecode, `mlir_module_serialized`). A note says when
`Exported.serialize()` refuses a program's argument tree (not a readiness failure).

Exits 1, saying why, if an export fails (a host callback, a `platform_dependent` with no branch
for the platform) or a custom call outside the neutral targets appears (LAPACK, DUCC, any one
platform's library). The programs and the checks are ambsn_jax.portability's, which
tests/test_platforms.py asserts on at a small width. Lowering everything takes ~20 s on a 2-core CPU.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import Counter
from collections.abc import Callable

import jax

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.inference.release import default_inference
from ambsn_jax.nets import registry
from ambsn_jax.portability import census, export_for, inference_program, problems, train_program
from ambsn_jax.train import config as configlib

BLOCK = 256


def programs(arch: str, width: int) -> list[tuple[str, Callable, tuple]]:
    """(label, jitted fn, abstract args) of the architecture's inference and training step."""
    record = registry.get(arch)
    overrides = [(["model", "base_ch"], width), (["data", "dir"], "unused: lowering only")]
    if not record.blind_spot:
        overrides.append((["distill", "teacher"], "unused: lowering only"))
    cfg = configlib.resolve(record.release_config, overrides)
    config = registry.network_config(arch, {"base_ch": width})
    meta = CheckpointMeta.for_network(
        arch, config, train_pd=cfg.train.pd, train_pd_pad=cfg.train.pd_pad, source="bench/lower.py"
    )
    infer = ("TTA+R3" if default_inference(meta).tta else "R3") if record.blind_spot else "one pass"
    n, s = cfg.train.batch_size, cfg.data.crop
    return [
        (f"infer {infer} 1x{BLOCK}x{BLOCK}", *inference_program(arch, config, meta, side=BLOCK)),
        (f"train {n}x{s}x{s} ({cfg.name})", *train_program(arch, cfg, width)),
    ]


def _fmt(counter: Counter) -> str:
    return ", ".join(f"{k} x{v}" for k, v in sorted(counter.items())) or "-"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--platform", nargs="+", default=["cuda", "tpu"], help="lowering platforms (default: cuda tpu)")
    p.add_argument("--arch", nargs="+", default=list(registry.ARCHITECTURES), choices=list(registry.ARCHITECTURES))
    p.add_argument("--width", type=int, default=128, help="network width base_ch (default: 128, the releases')")
    args = p.parse_args(argv)
    targets = [(pl,) for pl in args.platform]
    if len(args.platform) > 1:
        targets.append(tuple(args.platform))

    failures: list[str] = []
    notes: list[str] = []
    header = (
        f"{'arch':6} {'program':30} {'platform':10} {'conv':>5} {'dot':>5} {'while':>5} {'coll':>4} "
        f"{'text KB':>8} {'bc KB':>7} {'s':>5}  custom calls"
    )
    print(f"jax {jax.__version__}, width {args.width}")
    print(header)
    print("-" * len(header))
    start = time.perf_counter()
    for arch in args.arch:
        for label, fn, fargs in programs(arch, args.width):
            for platforms in targets:
                name = "+".join(platforms)
                t0 = time.perf_counter()
                try:
                    exp = export_for(fn, fargs, platforms)
                    text = exp.mlir_module()
                    size = len(exp.mlir_module_serialized)  # the StableHLO bytecode
                except Exception as e:  # noqa: BLE001 - every failure is reported, then exit 1
                    why = f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"
                    msg = f"{arch} {label} for {name}: export failed: {why}"
                    print(msg)
                    failures.append(msg)
                    continue
                took = time.perf_counter() - t0
                f = census(text)
                print(
                    f"{arch:6} {label:30} {name:10} {f['convolution']:5d} {f['dot_general']:5d} {f['while']:5d} "
                    f"{sum(f['collectives'].values()):4d} {f['text_bytes'] / 1e3:8.0f} {size / 1e3:7.0f} {took:5.1f}  "
                    f"{_fmt(f['custom_calls'])}"
                )
                if f["collectives"]:
                    print(f"{'':48}collectives: {_fmt(f['collectives'])}")
                failures += [f"{arch} {label} for {name}: {msg}" for msg in problems(f)]
                if platforms == targets[0]:
                    try:
                        exp.serialize()
                    except TypeError as e:  # not a readiness failure: the module itself is fine
                        notes.append(f"{arch} {label}: Exported.serialize() refuses its argument tree ({e})")
    print(f"\nlowered in {time.perf_counter() - start:.1f} s")
    for msg in notes:
        print(f"note: {msg}")
    if failures:
        print("\nNOT READY for " + ", ".join(args.platform) + ":", file=sys.stderr)
        for msg in failures:
            print(f"  {msg}", file=sys.stderr)
        return 1
    ready = ", ".join(args.platform)
    print(f"no host callback, no CPU-only or platform-specific custom call: ready for {ready}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
