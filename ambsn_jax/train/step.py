"""The self-supervised objective, the optimizer, and the jitted training step (docs/release.md, "Training").

Everything here is a pure function of its arguments: the network's structure (an NNX
GraphDef) and the optimizer are bound with `partial` before `jax.jit`, and the parameters
travel as a plain dict, the same tree that the checkpoint's `params` item holds.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from ambsn_jax.checkpoint.store import Params, params_of
from ambsn_jax.inference.release import pd_forward
from ambsn_jax.ops.conv import winograd
from ambsn_jax.ops.precision import convolutions_in, default_precision, with_precision
from ambsn_jax.train.config import Config, OptimSection
from ambsn_jax.train.recharge import recharge_batch

_RECHARGE_STREAM = 1  # of the step's key: the Recharger's draws, apart from the sub-image order's


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What a step computes, fixed for a run (a static argument of the jitted step)."""

    pd: int  # PD factor of the training forward
    pd_pad: int
    pd_shuffle: bool  # the release's random sub-image order
    accum_steps: int  # micro-batches the batch runs as
    precision: str  # of the convolutions (`ops.precision`)
    ema_decay: float | None  # of the served average of the weights; None: none kept
    skip_nonfinite: bool = False  # a non-finite step leaves the state as it was (else it is applied, and flagged)
    distill: bool = False  # batches pair noisy crops with the teacher's (channels 3..5): L1 to those
    # The Recharger's K teacher targets per crop (channels 3 .. 3 + 3K), mixed with the noisy
    # crop at every step (`recharge`), the loss a sum of L1 to each; 0: one target, unmixed.
    recharge: int = 0
    hole: int | None = None  # TM-BSN's hole size in the training forward; None: a network without one
    winograd: bool = False  # 3x3 convs by Winograd's algorithm on CPUs (`ops.winograd`); opt-in until measured end to end

    @property
    def batch_channels(self) -> int:
        """Channels of a batch: the noisy crops' RGB, then the teacher's when distilling."""
        return 3 + 3 * max(1, self.recharge) if self.distill else 3

    @classmethod
    def of(cls, cfg: Config) -> Recipe:
        t = cfg.train
        return cls(
            t.pd, t.pd_pad, t.pd_shuffle, t.accum_steps, t.precision or default_precision(), cfg.optim.ema_decay,
            t.skip_nonfinite, cfg.distill.teacher is not None, len(cfg.distill.recharge), t.hole, t.winograd,
        )  # fmt: skip


class TrainState(NamedTuple):
    params: Params
    opt_state: optax.OptState
    step: jax.Array  # int32 scalar: updates done so far
    rng: jax.Array  # typed PRNG key; the random sub-image order draws from it per step
    ema: Params | None  # the moving average of `params` when the recipe keeps one


def init_state(
    new_model: Callable[[], nnx.Module], tx: optax.GradientTransformation, seed: int, recipe: Recipe
) -> TrainState:
    """The state before the first step. Jit it with replicated output shardings: every device
    then builds its own copy, which also works across hosts, where `device_put` cannot place
    one host's arrays on the others' devices."""
    params = params_of(new_model())
    ema = params if recipe.ema_decay is not None else None
    return TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key(seed), ema)


def served(state: TrainState) -> Params:
    """The weights validation scores and checkpoints serve: the average when one is kept."""
    return state.params if state.ema is None else state.ema


def _hold_then_cosine(cfg: OptimSection) -> optax.Schedule:
    """TM-BSN's release's schedule: lr for hold_steps, then a cosine to final_lr over decay_steps.

    Its scheduler steps after the optimizer, so update i (from 0) runs at the schedule's value
    for i - 1 (update 0 at lr): reproduced here.
    """
    cosine = optax.cosine_decay_schedule(cfg.lr, cfg.decay_steps, alpha=cfg.final_lr / cfg.lr)
    schedule = optax.join_schedules([optax.constant_schedule(cfg.lr), cosine], [cfg.hold_steps])
    return lambda step: schedule(jnp.maximum(step - 1, 0))


def lr_schedule(cfg: OptimSection, steps_per_epoch: int) -> optax.Schedule:
    """The release's StepLR counted in steps (x decay_rate every decay_every_epochs), with an
    optional linear warmup multiplied in, so that the decay stays on the epoch boundaries;
    `cfg.schedule == "cosine"`: TM-BSN's (`_hold_then_cosine`), the warmup multiplied in too."""
    if cfg.schedule == "cosine":
        decay = _hold_then_cosine(cfg)
    else:
        decay = _step_decay(cfg, steps_per_epoch)
    if not cfg.warmup_steps:
        return decay
    return lambda step: decay(step) * jnp.minimum(1.0, (step + 1) / cfg.warmup_steps)


def _step_decay(cfg: OptimSection, steps_per_epoch: int) -> optax.Schedule:
    return optax.exponential_decay(
        cfg.lr, cfg.decay_every_epochs * steps_per_epoch, cfg.decay_rate, staircase=True
    )


def optimizer(cfg: OptimSection, schedule: optax.Schedule) -> optax.GradientTransformation:
    """Adam without weight decay, as the release; global-norm clipping only when configured."""
    adam = optax.adam(schedule, b1=cfg.b1, b2=cfg.b2)
    if cfg.grad_clip is None:
        return adam
    return optax.chain(optax.clip_by_global_norm(cfg.grad_clip), adam)


def l1_loss(
    params: Params, graphdef: nnx.GraphDef, batch: jax.Array, recipe: Recipe, perm: jax.Array | None = None
) -> jax.Array:
    """The self-supervised loss, L1 between the PD forward of the noisy crops and the crops
    themselves; with `recipe.distill`, L1 between the network's output on the noisy crops
    (channels 0..2) and the teacher's (3..5), or the sum of those to each of the Recharger's K
    targets (the release's loss). The mean over all pixels of each term either way."""
    net = with_precision(nnx.merge(graphdef, params), recipe.precision)
    if recipe.hole is not None:
        net = partial(net, hole=recipe.hole)
    with convolutions_in(recipe.precision), winograd(recipe.winograd):
        if recipe.distill:
            out = net(batch[..., :3])
            targets = jnp.split(batch[..., 3:], max(1, recipe.recharge), axis=-1)
            return sum(jnp.mean(jnp.abs(out - target)) for target in targets)
        return jnp.mean(jnp.abs(pd_forward(net, batch, recipe.pd, recipe.pd_pad, perm) - batch))


def _loss_and_grads(
    params: Params, graphdef: nnx.GraphDef, batch: jax.Array, recipe: Recipe, perm: jax.Array | None
) -> tuple[jax.Array, Params]:
    """The loss of the whole batch and its gradient, computed in `recipe.accum_steps` parts.

    Micro-batch k takes every K-th crop (k, k + K, ...), so that each device's rows of a batch
    split over the mesh stay on it; equal parts make the mean of the parts' means the batch's.
    """
    grad_fn = jax.value_and_grad(l1_loss)
    k = recipe.accum_steps
    if k == 1:
        return grad_fn(params, graphdef, batch, recipe, perm)
    parts = batch.reshape(batch.shape[0] // k, k, *batch.shape[1:]).swapaxes(0, 1)

    def add(total, part):
        loss, grads = grad_fn(params, graphdef, part, recipe, perm)
        return jax.tree.map(jnp.add, total, (loss, grads)), None

    zero = (jnp.zeros((), jnp.float32), jax.tree.map(jnp.zeros_like, params))
    total, _ = jax.lax.scan(add, zero, parts)
    return jax.tree.map(lambda v: v / k, total)


def train_step(
    graphdef: nnx.GraphDef,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    recipe: Recipe,
    state: TrainState,
    batch: jax.Array,
) -> tuple[TrainState, dict[str, jax.Array]]:
    """One Adam update on `batch` (N, S, S, 3) in 0..255; returns the new state and metrics.

    Bind the first four arguments, then jit: under a mesh, the batch is split over devices
    and XLA all-reduces the gradients, so the result does not depend on the device count.
    `metrics["nonfinite"]` flags a NaN / infinite loss, gradient norm or new parameters; with
    `recipe.skip_nonfinite` such an update is not applied (parameters, optimizer state and
    average stay; the step count still advances, so the data and schedule move on).
    """
    perm = None
    if recipe.pd_shuffle:
        perm = jax.random.permutation(jax.random.fold_in(state.rng, state.step), recipe.pd * recipe.pd)
    if recipe.recharge:
        # The whole batch mixed at once, so that accumulation's micro-batches do not change the draw.
        batch = recharge_batch(jax.random.fold_in(jax.random.fold_in(state.rng, state.step), _RECHARGE_STREAM), batch)
    loss, grads = _loss_and_grads(state.params, graphdef, batch, recipe, perm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema = state.ema
    if ema is not None:
        ema = optax.incremental_update(params, ema, step_size=1.0 - recipe.ema_decay)
    grad_norm = optax.tree.norm(grads)
    # The new parameters too: a finite gradient times a huge learning rate can still overflow.
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm) & all_finite(params)
    if recipe.skip_nonfinite:
        # One conditional over the trees: a select per leaf made XLA:CPU compile 8x longer.
        params, opt_state, ema = jax.lax.cond(
            finite, lambda: (params, opt_state, ema), lambda: (state.params, state.opt_state, state.ema)
        )
    metrics = {"loss": loss, "lr": schedule(state.step), "grad_norm": grad_norm, "nonfinite": ~finite}
    return TrainState(params, opt_state, state.step + 1, state.rng, ema), metrics


def all_finite(tree: Params) -> jax.Array:
    """Whether every value of every leaf of `tree` is finite (a scalar bool)."""
    leaves = jax.tree.leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves])) if leaves else jnp.bool_(True)
