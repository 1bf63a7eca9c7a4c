"""How convolutions compute: full float32, TF32, or bfloat16 (docs/release.md, "Measured tolerances").

One switch for inference and training. `highest` is float32 throughout, the numbers the
releases were checked at; `tf32` lets GPU tensor cores round the convolutions' inputs to TF32
(what PyTorch does by default on them, so the releases' own GPU runs were made that way; on
TPUs the nearest, 3-pass bfloat16); `bf16` computes convolutions and activations in bfloat16
while parameters, PD, fusion and R3 stay float32. JAX is imported where it is used, so that
command lines list `PRECISIONS` without loading it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any

PRECISIONS = ("highest", "tf32", "bf16")
# jax's names for the matmul precision each of ours sets (bf16 rounds the operands themselves).
_MATMUL = {"highest": "highest", "tf32": "high", "bf16": "default"}


def default_precision(platform: str | None = None) -> str:
    """The default on `platform` (default: JAX's backend): tf32 on GPUs, as PyTorch runs the
    releases there; full float32 elsewhere, where it costs nothing (CPUs) or TF32 does not exist."""
    import jax

    return "tf32" if (platform or jax.default_backend()) in ("gpu", "cuda", "rocm") else "highest"


def check(name: str) -> str:
    if name not in PRECISIONS:
        raise ValueError(f"precision {name!r}: one of {', '.join(PRECISIONS)}")
    return name


@contextlib.contextmanager
def convolutions_in(name: str) -> Iterator[None]:
    """Trace what runs inside with the matmul / convolution precision `name` asks for."""
    import jax

    with jax.default_matmul_precision(_MATMUL[check(name)]):
        yield


def with_precision(net: Any, name: str) -> Callable[[Any], Any]:
    """`net` computing at precision `name`: under bf16, every convolution casts its input and
    kernel to bfloat16 (as tensor cores take them), activations stay bfloat16 between layers,
    and the output returns to float32, whose 0..255 scale bfloat16 would round to steps of up
    to 1. The parameters themselves stay float32."""
    if check(name) != "bf16":
        return net
    import jax.numpy as jnp
    from flax import nnx

    for _, module in nnx.iter_modules(net):
        if isinstance(module, nnx.Conv):
            module.dtype = jnp.bfloat16
    return lambda z, **kw: net(z, **kw).astype(jnp.float32)
