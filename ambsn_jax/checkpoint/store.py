"""Checkpoints on disk: one Orbax `CheckpointManager` layout for converted and trained models.

Every step directory holds the item `params` (the network's parameters as a pure dict, the
one form they have from training to evaluation) and the item `meta` (a `CheckpointMeta` as
JSON). Training adds its own items beside them (`TRAINING_ITEMS`); `load_checkpoint` reads
only the first two, so a converted checkpoint and a training run's load the same way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from ambsn_jax.checkpoint import torch_port
from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.errors import UserError
from ambsn_jax.files import sha256_file
from ambsn_jax.nets import registry

Params = dict[str, Any]

# Item names of a step directory: every reader and writer takes them from here.
PARAMS = "params"
META = "meta"
OPT_STATE = "opt_state"  # training: the optimizer's state
TRAIN = "train"  # training: step count and RNG key
DATA = "data"  # training: the Grain iterator's position
# training with a moving average: the optimizer's own weights (`params` then holds the average,
# the weights the checkpoint serves)
TRAIN_PARAMS = "train_params"
TRAINING_ITEMS = (OPT_STATE, TRAIN, DATA, TRAIN_PARAMS)
# A training workdir keeps its manager here; load_checkpoint accepts the workdir itself too.
WORKDIR_CHECKPOINTS = "checkpoints"
# Training saves its validation scores with each step; the best step maximises this one.
BEST_METRIC = "psnr"
# The shipped demo AM-BSN (package data), trained on the demo's noisy images (`--config demo`).
DEMO_CHECKPOINT = Path(__file__).resolve().parents[1] / "assets" / "demo_ckpt"
# The shipped demo student, distilled from DEMO_CHECKPOINT (`--config distill_demo`).
DEMO_STUDENT = DEMO_CHECKPOINT.with_name("demo_student")
# The demo student of Noise2Noise on fresh noisy pairs (`--config distill_fresh_demo`, from
# DEMO_STUDENT): the best of these on the demo set, with the 4-rotation self-ensemble its
# metadata asks for.
DEMO_N2N = DEMO_CHECKPOINT.with_name("demo_n2n")
# The weights wherever a checkpoint may be left out: evaluate.py, `ambsn_jax.load` / `denoise`
# and ambsn-serve.
DEFAULT_WEIGHTS = DEMO_N2N


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A network's parameters and their metadata, as loaded from disk."""

    params: Params
    meta: CheckpointMeta
    path: Path
    step: int | None  # the step directory read; None for a .pth

    def module(self) -> nnx.Module:
        """The network as an NNX module holding these parameters (for calling it directly)."""
        return nnx.merge(registry.graphdef(self.meta.arch, self.meta.config), self.params)


def best_metric(metrics: dict[str, float]) -> float:
    return metrics[BEST_METRIC]


def params_of(model: nnx.Module) -> Params:
    """The parameters of an NNX module in the checkpoint's form."""
    return nnx.to_pure_dict(nnx.state(model, nnx.Param))


def _ocp():
    # Orbax costs a second to import: only the functions that touch checkpoints pay for it.
    import orbax.checkpoint as ocp

    return ocp


def save_args(params: Params, meta: CheckpointMeta) -> dict[str, Any]:
    """The `params` and `meta` items of a step, as Orbax save arguments."""
    ocp = _ocp()
    return {PARAMS: ocp.args.StandardSave(params), META: ocp.args.JsonSave(meta.to_json())}


def save_params(directory: str | Path, params: Params, meta: CheckpointMeta, step: int = 0) -> None:
    """Write `params` and `meta` as step `step` of a manager at `directory`."""
    ocp = _ocp()
    with ocp.CheckpointManager(Path(directory).absolute()) as mngr:
        mngr.save(step, args=ocp.args.Composite(**save_args(params, meta)))
        mngr.wait_until_finished()


def checkpoint_dir(path: Path) -> Path:
    """The manager's directory of `path`: a training workdir's `checkpoints/`, else `path`."""
    return path / WORKDIR_CHECKPOINTS if (path / WORKDIR_CHECKPOINTS).is_dir() else path


@contextlib.contextmanager
def _quiet_orbax() -> Iterator[None]:
    """Orbax reports routine facts about read-only managers ("Given directory is read only")
    as absl warnings; a library call that only reads says nothing unless something fails."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        yield
    finally:
        absl.setLevel(level)


@contextlib.contextmanager
def read_only_manager(path: Path, track_best: bool = True) -> Iterator[Any]:
    """A manager that reads `path` and writes nothing, quietly."""
    ocp = _ocp()
    options = ocp.CheckpointManagerOptions(
        read_only=True, create=False, save_interval_steps=0, best_fn=best_metric if track_best else None, best_mode="max"
    )
    with _quiet_orbax(), ocp.CheckpointManager(path.absolute(), options=options) as mngr:
        yield mngr


def _pick_step(mngr: Any, path: Path, step: int | None) -> int:
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


def read_meta(mngr: Any, step: int, where: Path) -> CheckpointMeta:
    """The `meta` item of `step`, checked; one UserError naming the checkpoint if it is not ours."""
    ocp = _ocp()
    try:
        raw = mngr.restore(step, args=ocp.args.Composite(**{META: ocp.args.JsonRestore()}))[META]
    except (OSError, ValueError, KeyError, json.JSONDecodeError) as e:
        raise UserError(f"{where} (step {step}): no readable metadata ({type(e).__name__}); not a checkpoint of this tool") from e
    return CheckpointMeta.from_json(raw, f"{where} (step {step})")


def abstract_params(meta: CheckpointMeta) -> Params:
    """Shapes and dtypes of the parameters `meta` describes, computing none of them, placed on
    this process's first device: every process of a multi-host run reads its own whole copy."""
    abstract = nnx.eval_shape(lambda: registry.build(meta.arch, meta.config))
    here = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    return jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=here), params_of(abstract))


def load_checkpoint(path: str | Path, step: int | None = None) -> Checkpoint:
    """Parameters and metadata from an Orbax checkpoint directory, a training workdir or a `.pth`.

    A `.pth` (the releases' format) is converted in memory, with every check of
    `convert/torch2flax.py`, its architecture told by its keys. A directory is a manager
    written by `save_params` or by training; `step` defaults to the best, else the latest.
    """
    path = Path(path)
    if path.suffix == ".pth" or path.is_file():
        params, cfg = torch_port.params_from_state_dict(torch_port.read_pth(path))
        arch = registry.of_config(cfg).name
        meta = CheckpointMeta.for_release(arch, cfg, source=path.name, source_sha256=sha256_file(path))
        return Checkpoint(params, meta, path, None)
    if not path.is_dir():
        raise UserError(f"{path}: no such checkpoint (give an Orbax directory, a training workdir or a .pth file)")
    ocp = _ocp()
    ckpt_dir = checkpoint_dir(path)
    with read_only_manager(ckpt_dir) as mngr:
        step = _pick_step(mngr, ckpt_dir, step)
        meta = read_meta(mngr, step, ckpt_dir)
        try:
            restored = mngr.restore(
                step, args=ocp.args.Composite(**{PARAMS: ocp.args.StandardRestore(abstract_params(meta))})
            )[PARAMS]
        except (OSError, ValueError, KeyError) as e:
            raise UserError(
                f"{ckpt_dir} (step {step}): parameters unreadable or not those of {meta.arch} {meta.config} ({e})"
            ) from e
    return Checkpoint(jax.tree.map(jnp.asarray, restored), meta, ckpt_dir, step)
