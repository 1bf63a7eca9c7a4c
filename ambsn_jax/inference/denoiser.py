"""The release's inference, compiled: one program per input shape, parameters passed per call."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ambsn_jax.inference.release import InferenceConfig, Network, denoise, self_ensemble
from ambsn_jax.nets import registry

Params = dict[str, Any]


def _in_bfloat16(net: nnx.Module) -> Network:
    """`net` with every convolution computing in bfloat16: inputs and weights rounded to it, as
    GPU tensor cores take them, and so are the activations between layers. Its output returns
    to float32, whose 0..255 scale bfloat16 would round to steps of up to 1."""
    for _, module in nnx.iter_modules(net):
        if isinstance(module, nnx.Conv):
            module.dtype = jnp.bfloat16
    return lambda z: net(z).astype(jnp.float32)


def _denoise_one(graphdef: nnx.GraphDef, cfg: InferenceConfig, params: Params, x: jax.Array, key: jax.Array) -> jax.Array:
    net = nnx.merge(graphdef, params)
    run = partial(denoise, _in_bfloat16(net) if cfg.bf16 else net, cfg=cfg)
    if cfg.self_ensemble:
        return self_ensemble(run, x[None], key)[0]
    return run(x[None], key)[0]


def fold_in_each(key: jax.Array, indices: Sequence[int] | np.ndarray) -> jax.Array:
    """One key per index i: `fold_in(key, i)`, so an item's draws depend on its index alone."""
    return jax.vmap(jax.random.fold_in, (None, 0))(key, jnp.asarray(indices, jnp.uint32))


class BatchDenoiser:
    """The inference `cfg` of network `arch` / `config`, compiled: `denoiser(params, x, keys)`.

    Image i draws its randomness (R3's replacement masks) from keys[i] alone, so its result
    does not depend on which images share its batch, and scores do not change with the batch
    size. The parameters are an argument of the compiled function, not constants baked into
    it: compiling stays fast at any width, and training scores each new set of parameters
    with the same program. jit caches one executable per input shape.
    """

    def __init__(self, arch: str, config: Any, cfg: InferenceConfig):
        self.cfg = cfg
        pure = partial(_denoise_one, registry.graphdef(arch, config), cfg)
        self._fn: Callable = jax.jit(jax.vmap(pure, in_axes=(None, 0, 0)))

    def __call__(self, params: Params, x: jax.Array | np.ndarray, keys: jax.Array) -> jax.Array:
        """(N, H, W, 3) float in 0..255, keys (N,) -> the same shape, unrounded (`postprocess` rounds)."""
        return self._fn(params, jnp.asarray(x, jnp.float32), keys)

    def compile(self, params: Params, shape: tuple[int, ...]) -> None:
        """Compile for (N, H, W, 3) batches now rather than on the first call.

        Lets a caller time compilation apart from running; the jit cache keeps the result.
        """
        keys = jax.eval_shape(lambda: jax.random.split(jax.random.key(0), shape[0]))
        self._fn.lower(params, jax.ShapeDtypeStruct(shape, jnp.float32), keys).compile()

    def min_side(self) -> int:
        """The shortest side R3's reflection padding accepts; smaller inputs are padded first."""
        return self.cfg.pd_pad + 1

    def bind(self, params: Params) -> BoundDenoiser:
        """This compiled inference with `params`: what evaluation calls, image batch by batch."""
        return BoundDenoiser(self, params)


@dataclasses.dataclass(frozen=True)
class BoundDenoiser:
    """A `BatchDenoiser` and the parameters it runs with: `denoiser(x, keys)`.

    Cheap to make: it shares the compiled program, so training binds each new set of
    parameters to the same `BatchDenoiser` rather than changing one in place.
    """

    batch_denoiser: BatchDenoiser
    params: Params

    @property
    def cfg(self) -> InferenceConfig:
        return self.batch_denoiser.cfg

    def __call__(self, x: jax.Array | np.ndarray, keys: jax.Array) -> jax.Array:
        return self.batch_denoiser(self.params, x, keys)

    def compile(self, shape: tuple[int, ...]) -> None:
        self.batch_denoiser.compile(self.params, shape)

    def min_side(self) -> int:
        return self.batch_denoiser.min_side()
