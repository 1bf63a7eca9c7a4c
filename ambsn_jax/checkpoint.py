"""Checkpoints on disk: one Orbax `CheckpointManager` layout for converted and trained models.

Every step directory holds the item `params` (the model's parameters as a pure dict) and
the item `meta` (JSON: architecture, its config, where the weights came from). Training adds
its own items beside them (optimizer, RNG, data iterator); `load_model` reads only these two,
so a converted checkpoint and a training run's checkpoints load the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from ambsn_jax import __version__, family, torch_port
from ambsn_jax.errors import UserError
from ambsn_jax.files import sha256_file
from ambsn_jax.family import Model

PARAMS = "params"
META = "meta"
# A training workdir keeps its manager here; load_model accepts the workdir itself too.
WORKDIR_CHECKPOINTS = "checkpoints"
# Training saves its validation scores with each step; the best step maximises this one.
BEST_METRIC = "psnr"


def best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


def build_model(meta: dict[str, Any], seed: int = 0) -> Model:
    """A freshly initialised network of the architecture that `meta` records (default AM-BSN)."""
    arch = meta.get("arch", "ambsn")
    if arch not in family.ARCHITECTURES:
        raise UserError(f"unknown architecture {arch!r} in checkpoint metadata")
    return family.build(arch, meta["config"], nnx.Rngs(seed))


def model_meta(model: Model, **extra: Any) -> dict[str, Any]:
    return {
        "arch": family.arch_of(model.config),
        "config": model.config.to_dict(),
        "tool_version": __version__,
        **extra,
    }


def params_dict(model: nnx.Module) -> dict:
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _abstract_params(model: nnx.Module) -> dict:
    return jax.tree.map(ocp.utils.to_shape_dtype_struct, params_dict(model))


def save_params(directory: str | Path, model: nnx.Module, meta: dict[str, Any], step: int = 0) -> None:
    """Write `model`'s parameters and `meta` as step `step` of a manager at `directory`."""
    with ocp.CheckpointManager(Path(directory).absolute()) as mngr:
        mngr.save(
            step,
            args=ocp.args.Composite(
                **{PARAMS: ocp.args.StandardSave(params_dict(model)), META: ocp.args.JsonSave(meta)}
            ),
        )
        mngr.wait_until_finished()


def _checkpoint_dir(path: Path) -> Path:
    return path / WORKDIR_CHECKPOINTS if (path / WORKDIR_CHECKPOINTS).is_dir() else path


def _pick_step(mngr: ocp.CheckpointManager, path: Path, step: int | None) -> int:
    steps = mngr.all_steps()
    if not steps:
        raise UserError(f"{path}: no checkpoint in this directory (convert a .pth with convert/torch2flax.py, or train)")
    if step is None:
        # A training run's best by validation PSNR when it tracked one, else its latest.
        best = mngr.best_step()
        return best if best is not None else mngr.latest_step()
    if step not in steps:
        raise UserError(f"{path}: no step {step}; steps present: {', '.join(map(str, steps))}")
    return step


def load_model(path: str | Path, step: int | None = None) -> tuple[Model, dict[str, Any]]:
    """A ready model and its metadata from an Orbax checkpoint directory or a `.pth` file.

    A `.pth` (the releases' format) is converted in memory, with every check of
    `convert/torch2flax.py`, its architecture told by its keys. A directory is a manager
    written by `save_params` or by training (its workdir works too); `step` defaults to the
    best, else the latest.
    """
    path = Path(path)
    if path.suffix == ".pth" or path.is_file():
        state_dict = torch_port.read_pth(path)
        model = torch_port.model_from_state_dict(state_dict)
        return model, model_meta(model, source=str(path), source_sha256=sha256_file(path))
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint (give an Orbax directory or a .pth file)")
    ckpt_dir = _checkpoint_dir(path)
    options = ocp.CheckpointManagerOptions(read_only=True, best_fn=best_metric, best_mode="max")
    with ocp.CheckpointManager(ckpt_dir.absolute(), options=options) as mngr:
        step = _pick_step(mngr, ckpt_dir, step)
        meta = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
        # Shapes only: the restore sets every value, and a random init costs seconds of compiling.
        model = nnx.eval_shape(lambda: build_model(meta))
        restored = mngr.restore(
            step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(_abstract_params(model))})
        )[PARAMS]
    state = nnx.state(model, nnx.Param)
    nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, restored))
    nnx.update(model, state)
    return model, {**meta, "step": step}
