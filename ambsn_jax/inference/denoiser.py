"""The release's inference, compiled over a device mesh: one program per input shape,
parameters passed per call, items split over the devices (and processes)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ambsn_jax import mesh as meshlib
from ambsn_jax.inference.release import InferenceConfig, denoise, self_ensemble
from ambsn_jax.nets import registry
from ambsn_jax.ops.conv import winograd
from ambsn_jax.ops.precision import convolutions_in, with_precision

Params = dict[str, Any]


def _denoise_one(graphdef: nnx.GraphDef, cfg: InferenceConfig, params: Params, x: jax.Array, key: jax.Array) -> jax.Array:
    net = with_precision(nnx.merge(graphdef, params), cfg.precision)
    run = partial(denoise, net if cfg.hole is None else partial(net, hole=cfg.hole), cfg=cfg)
    with convolutions_in(cfg.precision), winograd(cfg.winograd):
        if cfg.self_ensemble > 1:
            return self_ensemble(run, x[None], key, cfg.self_ensemble)[0]
        return run(x[None], key)[0]


class BatchDenoiser:
    """The inference `cfg` of network `arch` / `config`, compiled over the devices of `mesh`.

    `denoiser.bind(params)(x, keys)` denoises a batch, its items split over the mesh's `data`
    axis (default: every device of every host). Item i draws its randomness (R3's replacement
    masks) from keys[i] alone, so its result depends neither on which items share its batch nor
    on the number of devices or processes. The parameters are an argument of the compiled
    function, not constants baked into it: compiling stays fast at any width, and training
    scores each new set of parameters with the same program. jit caches one executable per
    input shape.
    """

    def __init__(self, arch: str, config: Any, cfg: InferenceConfig, mesh: Mesh | None = None):
        self.cfg = cfg
        self.mesh = mesh if mesh is not None else meshlib.make_mesh()
        self._items = NamedSharding(self.mesh, P(meshlib.DATA_AXIS))
        self._replicated = NamedSharding(self.mesh, P())
        pure = partial(_denoise_one, registry.graphdef(arch, config), cfg)

        def run(params: Params, x: jax.Array, key_data: jax.Array) -> jax.Array:
            # Keys travel as raw uint32 data: global arrays are assembled from host arrays.
            return jax.vmap(pure, in_axes=(None, 0, 0))(params, x, jax.random.wrap_key_data(key_data))

        self._fn: Callable = jax.jit(
            run, in_shardings=(self._replicated, self._items, self._items), out_shardings=self._items
        )

    @property
    def devices(self) -> int:
        return self.mesh.size

    @property
    def program(self) -> Callable:
        """The jitted function `(params, x, key_data) -> out` over global arrays: for lowering
        and export (`abstract_args` gives its arguments' shapes)."""
        return self._fn

    def abstract_args(self, params: Params, n: int, h: int, w: int) -> tuple[Any, jax.ShapeDtypeStruct, jax.ShapeDtypeStruct]:
        """`program`'s arguments for a global batch of `n` blocks of h x w, as shapes."""
        shape = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=self._replicated), params)
        x = jax.ShapeDtypeStruct((n, h, w, 3), jnp.float32, sharding=self._items)
        keys = jax.ShapeDtypeStruct((n, 2), jnp.uint32, sharding=self._items)
        return shape, x, keys

    def bind(self, params: Params) -> BoundDenoiser:
        """This compiled inference with `params` (replicated onto the mesh once, here)."""

        def place(a: Any) -> jax.Array:
            if isinstance(a, jax.Array) and a.sharding.is_equivalent_to(self._replicated, a.ndim):
                return a
            return jax.make_array_from_process_local_data(self._replicated, np.asarray(a))

        return BoundDenoiser(self, jax.tree.map(place, params))

    def min_side(self) -> int:
        """The shortest side R3's reflection padding accepts; smaller inputs are padded first."""
        return max(self.cfg.pd_pad, self.cfg.reflect_pad) + 1

    def _global(self, local: np.ndarray) -> jax.Array:
        return jax.make_array_from_process_local_data(self._items, local)

    def local_rows(self, n: int) -> np.ndarray:
        """The rows of a global batch of `n` items (a multiple of the mesh's devices) that this
        process feeds, in order: what `run` takes from it."""
        shards = self._items.devices_indices_map((n,))
        mine = [shards[d][0] for d in self.mesh.devices.flat if d.process_index == jax.process_index()]
        return np.concatenate([np.arange(n)[s] for s in sorted(mine, key=lambda s: s.start or 0)])

    def run(self, params: Params, x: np.ndarray, keys: jax.Array) -> np.ndarray:
        """This process's rows `x` (`local_rows` of a global batch) and their keys -> the whole
        global batch's outputs, unrounded, on every process (a collective when the mesh spans
        several)."""
        key_data = np.asarray(jax.random.key_data(keys))
        out = self._fn(params, self._global(np.asarray(x, np.float32)), self._global(key_data))
        return meshlib.gather(out)

    def compile(self, params: Params, local_shape: tuple[int, ...]) -> None:
        """Compile for batches of this process's shape (N, H, W, 3) now rather than on the first
        call: lets a caller time compilation apart from running; the jit cache keeps the result."""
        n = local_shape[0] * self.mesh.size // self.local_devices()
        _, x, keys = self.abstract_args(params, n, *local_shape[1:3])
        # Lowered with the bound arrays themselves: their types (a one-device array carries no
        # mesh) are those `run` passes, so this is the program jit's cache then finds.
        self._fn.lower(params, x, keys).compile()

    def local_devices(self) -> int:
        """How many of the mesh's devices this process feeds: its rows of a batch are a multiple."""
        return sum(d.process_index == jax.process_index() for d in self.mesh.devices.flat)


@dataclasses.dataclass(frozen=True)
class BoundDenoiser:
    """A `BatchDenoiser` and the parameters it runs with.

    Cheap to make: it shares the compiled program, so training binds each new set of
    parameters to the same `BatchDenoiser` rather than changing one in place.
    """

    batch_denoiser: BatchDenoiser
    params: Params

    @property
    def cfg(self) -> InferenceConfig:
        return self.batch_denoiser.cfg

    def __call__(self, x: jax.Array | np.ndarray, keys: jax.Array) -> np.ndarray:
        """A batch (N, H, W, 3) in 0..255 held by this process alone, keys (N,) -> the same
        shape, unrounded (`postprocess` rounds). Padded here to a multiple of the devices."""
        x = np.asarray(x, np.float32)
        n, m = x.shape[0], self.batch_denoiser.local_devices()
        fill = np.minimum(np.arange(-(-n // m) * m), n - 1)
        return self.batch_denoiser.run(self.params, x[fill], keys[fill])[:n]

    def run(self, x: np.ndarray, keys: jax.Array) -> np.ndarray:
        """`BatchDenoiser.run` with these parameters: this process's rows of a global batch."""
        return self.batch_denoiser.run(self.params, x, keys)

    def compile(self, local_shape: tuple[int, ...]) -> None:
        self.batch_denoiser.compile(self.params, local_shape)

    def min_side(self) -> int:
        return self.batch_denoiser.min_side()

    @property
    def devices(self) -> int:
        return self.batch_denoiser.devices
