"""The self-supervised objective, the optimizer, and the jitted training step (docs/release.md, "Training").

Everything here is a pure function of its arguments: the network's structure (an NNX
GraphDef) and the optimizer are bound with `partial` before `jax.jit`, and the parameters
travel as a plain dict, the same tree that the checkpoint's `params` item holds.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ambsn_jax.checkpoint.store import Params, params_of
from ambsn_jax.inference.release import pd_forward
from ambsn_jax.train.config import OptimSection, TrainSection



class TrainState(NamedTuple):
    params: Params
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: updates done so far
    rng: jax.Array  # typed PRNG key; the random sub-image order draws from it per step


def init_state(new_model: Callable[[], nnx.Module], tx: optax.GradientTransformation, seed: int) -> TrainState:
    """The state before the first step. Jit it with replicated output shardings: every device
    then builds its own copy, which also works across hosts, where `device_put` cannot place
    one host's arrays on the others' devices."""
    params = params_of(new_model())
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key(seed))


def lr_schedule(cfg: OptimSection, steps_per_epoch: int) -> optax.Schedule:
    """The release's StepLR counted in steps (x decay_rate every decay_every_epochs), with an
    optional linear warmup multiplied in, so that the decay stays on the epoch boundaries."""
    decay = optax.exponential_decay(
        cfg.lr, cfg.decay_every_epochs * steps_per_epoch, cfg.decay_rate, staircase=True
    )
    if not cfg.warmup_steps:
        return decay
    return lambda step: decay(step) * jnp.minimum(1.0, (step + 1) / cfg.warmup_steps)


def optimizer(cfg: OptimSection, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam without weight decay, as the release; global-norm clipping only when configured."""
    adam = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
    if cfg.grad_clip is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adam)


def l1_loss(
    params: Params, graphdef: nnx.GraphDef, batch: jax.Array, cfg: TrainSection, perm: jax.Array | None = None
) -> jax.Array:
    """L1 between the PD forward of the noisy crops and the crops themselves, mean over all."""
    net = nnx.merge(graphdef, params)
    return jnp.mean(jnp.abs(pd_forward(net, batch, cfg.pd, cfg.pd_pad, perm) - batch))


def train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    cfg: TrainSection,
    state: TrainState,
    batch: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One Adam update on `batch` (N, S, S, 3) in 0..255; returns the new state and metrics.

    Bind the first four arguments, then jit: under a mesh, the batch is split over devices
    and XLA all-reduces the gradients, so the result does not depend on the device count.
    """
    perm = None
    if cfg.pd_shuffle:
        perm = jax.random.permutation(jax.random.fold_in(state.rng, state.step), cfg.pd * cfg.pd)
    loss, grads = jax.value_and_grad(l1_loss)(state.params, graphdef, batch, cfg, perm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = {"loss": loss, "lr": schedule(state.step), "grad_norm": optax.tree.norm(grads)}
    return TrainState(params, opt_state, state.step + 1, state.rng), metrics
