"""Is a compiled program portable to GPUs and TPUs? Checked on any machine, with `jax.export`.

Exporting lowers a jitted function to StableHLO for the named platforms and computes nothing,
so the weights stay abstract (shapes only) and neither a GPU nor a TPU is needed: a CPU machine
can tell whether the release inference and the training step would compile for cuda and tpu.
What ties a program to one platform, and how each shows:
- a host callback (`jax.pure_callback`, `io_callback`, `jax.debug.callback` / `print`): the
  export itself refuses it for a platform other than the one the callback runs on;
- a `lax.platform_dependent` with a cpu branch and no default: there is nothing to lower for
  cuda / tpu, and the export fails;
- a custom call of one platform's library (LAPACK `lapack_*`, DUCC FFTs `ducc_*`, `cpu_*`,
  cuSOLVER, ...): `census` lists the targets and `problems` refuses all but `NEUTRAL_TARGETS`.

`tests/test_platforms.py` asserts all of this for the release programs; `bench/lower.py` prints
the counts at the releases' width. Both build their programs here, so that what is checked is
the program that `BatchDenoiser` and the training loop compile, not a copy of it.

Not imported by the package itself: nothing on the inference or training path needs it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from jax import export
from jax.sharding import AxisType, Mesh

from ambsn_jax import mesh as meshlib
from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint.store import abstract_params
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.release import default_inference
from ambsn_jax.nets import registry
from ambsn_jax.train.config import Config
from ambsn_jax.train.step import Recipe, init_state, lr_schedule, optimizer, train_step

# Custom-call targets that every platform compiles: sharding annotations and the export's own
# shape assertions. Any other target belongs to one platform's library.
NEUTRAL_TARGETS: frozenset[str] = frozenset(
    {"Sharding", "SPMDFullToShardShape", "SPMDShardToFullShape", "annotate_device_placement", "shape_assertion"}
)
# Targets that only a CPU compiles: named apart, as they are the likely slip of a CPU-developed port.
CPU_ONLY: re.Pattern[str] = re.compile(r"^(lapack_|ducc_|cpu_)|callback")
# A custom call's target, in either spelling of the StableHLO text (pretty or generic form).
CUSTOM_CALL_TARGET: re.Pattern[str] = re.compile(r'stablehlo\.custom_call @([\w.$-]+)|call_target_name = "([^"]+)"')
COLLECTIVE: re.Pattern[str] = re.compile(
    r"\bstablehlo\.(all_reduce|all_gather|reduce_scatter|collective_permute|all_to_all)\b"
)
# How long the training schedule's epochs are, for lowering: its value changes constants only.
_STEPS_PER_EPOCH = 1000


def _count(op: str, text: str) -> int:
    return len(re.findall(rf"\bstablehlo\.{op}\b", text))


def census(text: str) -> dict[str, Any]:
    """What a StableHLO module's text holds, of what tells where it runs and what it computes:
    `convolution`, `dot_general` and `while` (counts), `collectives` and `custom_calls`
    (Counters by op / target) and `text_bytes`, the module's size as text."""
    return {
        "convolution": _count("convolution", text),
        "dot_general": _count("dot_general", text),
        "while": _count("while", text),
        "collectives": Counter(COLLECTIVE.findall(text)),
        "custom_calls": Counter(a or b for a, b in CUSTOM_CALL_TARGET.findall(text)),
        "text_bytes": len(text.encode()),
    }


def problems(facts: dict[str, Any]) -> list[str]:
    """Why a module of this `census` is not portable: its CPU-only custom calls, then those of
    any other one platform; empty when it is. Messages, not an exception, so that a report can
    list every program's problems before it fails."""
    calls = facts["custom_calls"]
    cpu_only = sorted(t for t in calls if CPU_ONLY.search(t))
    other = sorted(set(calls) - NEUTRAL_TARGETS - set(cpu_only))
    out = []
    if cpu_only:
        out.append(f"CPU-only custom calls: {', '.join(cpu_only)}")
    if other:
        out.append(f"platform-specific custom calls: {', '.join(other)}")
    return out


def export_for(fn: Callable, args: Sequence[Any], platforms: Sequence[str]) -> export.Exported:
    """`fn` (jitted) lowered for `platforms` on abstract `args`. Several platforms make one
    module that picks its platform when compiled. Raises what the export raises: a host
    callback, or a `platform_dependent` without a branch for one of the platforms."""
    return export.export(fn, platforms=tuple(platforms))(*args)


def one_device_mesh() -> Mesh:
    """A `data` mesh over this machine's first device: an export then speaks of one device
    (`Exported.nr_devices`), whatever the machine has."""
    return jax.make_mesh((1,), (meshlib.DATA_AXIS,), axis_types=(AxisType.Auto,), devices=jax.devices()[:1])


def inference_program(
    arch: str, config: Any, meta: CheckpointMeta, mesh: Mesh | None = None, n: int = 1, side: int = 256
) -> tuple[Callable, tuple[Any, ...]]:
    """The release inference of `meta` (`default_inference`) for a global batch of `n` blocks of
    `side` x `side`: the jitted program `BatchDenoiser` runs, over `mesh` (default: one device),
    and its abstract arguments (params, x, key data), placed as it places them."""
    denoiser = BatchDenoiser(arch, config, default_inference(meta), mesh if mesh is not None else one_device_mesh())
    return denoiser.program, denoiser.abstract_args(abstract_params(meta), n, side, side)


def train_program(arch: str, cfg: Config, width: int, mesh: Mesh | None = None) -> tuple[Callable, tuple[Any, ...]]:
    """The training step of `cfg`'s recipe, optimizer, batch size and crop for the network `arch`
    of width `width` (these two replace cfg.model's, so one config lowers at any width): the
    jitted `(state, batch) -> (state, metrics)` the training loop compiles, and its abstract
    arguments. Over a `mesh`, as the loop runs it: the batch split along `data`, the state
    replicated in and out. The recipe's precision is cfg's, else this machine's default."""
    config = registry.network_config(arch, {"base_ch": width})
    schedule = lr_schedule(cfg.optim, _STEPS_PER_EPOCH)
    tx = optimizer(cfg.optim, schedule)
    recipe = Recipe.of(cfg)
    state = jax.eval_shape(partial(init_state, partial(registry.build, arch, config), tx, 0, recipe))
    batch = jax.ShapeDtypeStruct((cfg.train.batch_size, cfg.data.crop, cfg.data.crop, recipe.batch_channels), jnp.float32)
    step = partial(train_step, registry.graphdef(arch, config), tx, schedule, recipe)
    if mesh is None:
        return jax.jit(step), (state, batch)
    rep, split = meshlib.replicated(mesh), meshlib.batch_sharding(mesh)
    state = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=rep), state)
    batch = jax.ShapeDtypeStruct(batch.shape, batch.dtype, sharding=split)
    return jax.jit(step, out_shardings=rep), (state, batch)
