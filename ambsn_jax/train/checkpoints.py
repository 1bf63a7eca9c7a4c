"""A run's checkpoints: the manager that keeps them, and what a step saves and restores.

Every step directory of `<workdir>/checkpoints` holds the shared items `params` and `meta`
(see `ambsn_jax.checkpoint.store`, so `evaluate.py --ckpt <workdir>` loads it) beside
training's own (`store.TRAINING_ITEMS`: optimizer state, step and RNG key, and the Grain
iterator's position).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies

from ambsn_jax import mesh as meshlib
from ambsn_jax.checkpoint import store
from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.train import nonfinite
from ambsn_jax.train.step import TrainState, served


def checkpoint_manager(workdir: Path, keep: int, track_best: bool) -> ocp.CheckpointManager:
    """Keeps the `keep` latest steps and, if `track_best`, the best by validation PSNR (steps
    without one don't compete); `best_step()` then names that step."""
    options = ocp.CheckpointManagerOptions(
        # Orbax writes the metrics passed to save() only when it tracks a best.
        best_fn=store.best_metric if track_best else None,
        best_mode="max",
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.LatestN(keep),
                policies.BestN(get_metric_fn=store.best_metric, n=1, keep_checkpoints_without_metrics=False),
            ]
        ),
        # A run killed mid-save leaves a temporary directory; the rerun clears it.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(workdir / store.WORKDIR_CHECKPOINTS, options=options)


def _train_item(state: TrainState, skipped: jax.Array) -> dict[str, jax.Array]:
    # Orbax stores plain arrays: the typed key goes as its raw key data. `skipped`: the count
    # of non-finite steps skipped so far (`nonfinite.SKIPPED`), an int32 scalar.
    return {"step": state.step, "rng": jax.random.key_data(state.rng), nonfinite.SKIPPED: skipped}


def scalar(value: int, mesh: jax.sharding.Mesh) -> jax.Array:
    """An int32 scalar on every device of the mesh (every process passes the same value)."""
    return jax.make_array_from_callback((), meshlib.replicated(mesh), lambda _: np.int32(value))


def save_args(
    state: TrainState, meta: CheckpointMeta, data_iter: grain.DatasetIterator, skipped: jax.Array
) -> ocp.args.Composite:
    extra = {} if state.ema is None else {store.TRAIN_PARAMS: ocp.args.StandardSave(state.params)}
    return ocp.args.Composite(
        **store.save_args(served(state), meta),
        **{
            store.OPT_STATE: ocp.args.StandardSave(state.opt_state),
            store.TRAIN: ocp.args.StandardSave(_train_item(state, skipped)),
            store.DATA: grain.checkpoint.CheckpointSave(data_iter),
        },
        **extra,
    )


def restore(
    mngr: ocp.CheckpointManager, step: int, state: TrainState, data_iter: grain.DatasetIterator, skipped: jax.Array
) -> tuple[TrainState, int]:
    """`state` (for its structure and shardings) and `data_iter`, restored from `step`, and the
    count of skipped non-finite steps (0 for checkpoints written before it was kept)."""
    abstract = partial(jax.tree.map, ocp.utils.to_shape_dtype_struct)

    def restore(train_item: dict[str, jax.Array]) -> dict:
        items = {
            store.PARAMS: ocp.args.StandardRestore(abstract(served(state))),
            store.OPT_STATE: ocp.args.StandardRestore(abstract(state.opt_state)),
            store.TRAIN: ocp.args.StandardRestore(abstract(train_item)),
            store.DATA: grain.checkpoint.CheckpointRestore(data_iter),
        }
        if state.ema is not None:
            items[store.TRAIN_PARAMS] = ocp.args.StandardRestore(abstract(state.params))
        return mngr.restore(step, args=ocp.args.Composite(**items))

    train_item = _train_item(state, skipped)
    try:
        restored = restore(train_item)
    except Exception as e:  # noqa: BLE001 - whatever fails, the step without the count may restore
        # A checkpoint of a version that kept no count of skipped steps; anything else fails again.
        try:
            restored = restore({k: v for k, v in train_item.items() if k != nonfinite.SKIPPED})
        except Exception:  # noqa: BLE001
            raise e from None
    train = restored[store.TRAIN]
    rng = jax.random.wrap_key_data(train["rng"], impl=jax.random.key_impl(state.rng))
    count = int(train[nonfinite.SKIPPED]) if nonfinite.SKIPPED in train else 0
    if state.ema is None:
        return TrainState(restored[store.PARAMS], restored[store.OPT_STATE], train["step"], rng, None), count
    params, ema = restored[store.TRAIN_PARAMS], restored[store.PARAMS]
    return TrainState(params, restored[store.OPT_STATE], train["step"], rng, ema), count
