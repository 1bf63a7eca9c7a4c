"""XLA's planned memory of a training step at the releases' width (C = 128, the release's batch
of 120 x 120 crops, PD 5) under variants of what the backward pass keeps; compiles only, runs nothing.

    python bench/train_memory.py [--arch ambsn apbsn mmbsn] [--batch 8]
                                 [--variant current jax_relu relu_from_output xla_kernel_grad remat_dcl]

`temp` is `compiled.memory_analysis().temp_size_in_bytes`: the buffers XLA plans for the step
beyond its arguments and outputs (activations kept for the backward pass, gradients, scratch),
the quantity a variant must shrink. `current` is the package as it is (`ops.relu`: the ReLU's
backward reads a packed bit mask); `jax_relu` puts `jax.nn.relu` back (what the package ran
before); `relu_from_output` a ReLU whose backward reads its float output. Each variant runs in
its own process (they patch modules).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from functools import partial

# The releases' networks (trained with PD), named rather than read from the registry: importing
# it imports the networks, which bind `ops.relu.relu` before `_patch` could replace it.
ARCHS = ("ambsn", "apbsn", "mmbsn")
VARIANTS = ("current", "jax_relu", "relu_from_output", "xla_kernel_grad", "remat_dcl")


def _patch(variant: str) -> None:
    """Patch before the networks are imported: they bind `ops.relu.relu` at import."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ambsn_jax.ops import conv
    from ambsn_jax.ops import relu as relu_op

    if variant == "jax_relu":
        relu_op.relu = jax.nn.relu
    elif variant == "relu_from_output":

        @jax.custom_vjp
        def relu(x):
            return jnp.maximum(x, 0)

        relu.defvjp(lambda x: (jnp.maximum(x, 0), jnp.maximum(x, 0)), lambda y, g: (jnp.where(y > 0, g, 0),))
        relu_op.relu = relu
    elif variant == "xla_kernel_grad":  # XLA's own kernel gradient on CPUs too, not the tap-wise scan

        def bwd(padding, dilation, residuals, g):
            x, w = residuals
            return jax.vjp(lambda x, w: conv._xla_conv(x, w, padding, dilation), x, w)[1](g)

        conv._conv.defvjp(conv._conv_fwd, bwd)
    elif variant == "remat_dcl":  # every dilated residual block recomputed in the backward pass
        from ambsn_jax.nets import blocks

        blocks.DCl.__call__ = nnx.remat(blocks.DCl.__call__)


def _child(arch: str, variant: str, batch: int) -> None:
    _patch(variant)
    import jax
    import jax.numpy as jnp

    from ambsn_jax.nets import registry
    from ambsn_jax.train import config as configlib
    from ambsn_jax.train.step import Recipe, init_state, lr_schedule, optimizer, train_step

    cfg = configlib.resolve(registry.get(arch).release_config, [(["data", "dir"], "unused: compiling only")])
    schedule = lr_schedule(cfg.optim, 1000)
    tx = optimizer(cfg.optim, schedule)
    recipe = Recipe.of(cfg)
    state = jax.eval_shape(partial(init_state, partial(registry.build, arch, {}), tx, 0, recipe))
    batch_shape = jax.ShapeDtypeStruct((batch, cfg.data.crop, cfg.data.crop, 3), jnp.float32)
    step = jax.jit(partial(train_step, registry.graphdef(arch, {}), tx, schedule, recipe), donate_argnums=0)
    m = step.lower(state, batch_shape).compile().memory_analysis()
    mib = 2**20
    print(f"| {arch} | {variant} | {m.temp_size_in_bytes / mib:,.0f} | {m.argument_size_in_bytes / mib:,.0f} | {m.output_size_in_bytes / mib:,.0f} |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", choices=ARCHS, default=["ambsn"])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--variant", nargs="+", choices=VARIANTS, default=list(VARIANTS))
    ap.add_argument("--child", nargs=2, metavar=("ARCH", "VARIANT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(*args.child, args.batch)
        return 0
    print(f"Training step at C = 128, batch {args.batch}: XLA's planned memory (MiB)")
    print("| network | variant | temp | arguments | outputs |\n| --- | --- | --- | --- | --- |", flush=True)
    for arch in args.arch:
        for variant in args.variant:
            cmd = [sys.executable, __file__, "--child", arch, variant, "--batch", str(args.batch)]
            subprocess.run(cmd, check=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
