"""The training loop: data, state, resume, steps, validation, checkpoints, final evaluation.

Every step directory of `<workdir>/checkpoints` holds the shared items `params` and `meta`
(see `ambsn_jax.checkpoint`, so `evaluate.py --ckpt <workdir>` loads it) beside training's
own: `opt_state`, `train` (step and RNG key) and `data` (the Grain iterator's position).
Rerunning the same command resumes from the latest step; given the seed, the resumed run's
numbers are those of an uninterrupted one.
"""

from __future__ import annotations

import json
from functools import partial
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from orbax.checkpoint import checkpoint_managers as policies
from tensorboardX import SummaryWriter
from tqdm import tqdm

from ambsn_jax import family
from ambsn_jax.checkpoint import META, PARAMS, WORKDIR_CHECKPOINTS, best_metric, load_model, model_meta, params_dict
from ambsn_jax.data.demo import demo_root
from ambsn_jax.data.pipeline import batch_iterator, training_batches
from ambsn_jax.data.sidd import find_noisy_images, prepare_patches
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation import cli as evaluation_cli
from ambsn_jax.evaluation import sidd as sidd_eval
from ambsn_jax.inference import Denoiser, default_inference
from ambsn_jax.train import mesh as meshlib
from ambsn_jax.train.config import Config, DataSection, save_resolved
from ambsn_jax.train.step import (
    TrainState,
    init_state,
    lr_schedule,
    optimizer,
    train_step,
)

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"


def training_images(cfg: DataSection, workdir: Path) -> list[Path]:
    """The images crops are drawn from: the noisy images of the data folder, or its patches."""
    root = demo_root() / "SIDD_Medium_Srgb" if cfg.dir == "demo" else Path(cfg.dir)
    if not cfg.patches:
        return find_noisy_images(root)
    patch_dir = Path(cfg.patch_dir) if cfg.patch_dir else workdir / "patches"
    return prepare_patches(root, patch_dir, cfg.patch_size, cfg.patch_stride)


def validation_dir(cfg: Config) -> Path | None:
    """The folder of SIDD-format validation blocks, if the config validates."""
    if cfg.val.dir is None:
        return None
    return demo_root() if cfg.val.dir == "demo" else Path(cfg.val.dir)


def initial_params(path: str, abstract_model: nnx.Module) -> dict:
    """The parameters of checkpoint `path`, which must hold the network the config describes."""
    model, meta = load_model(path)
    want = {"arch": model_meta(abstract_model)["arch"], "config": abstract_model.config.to_dict()}
    got = {"arch": meta["arch"], "config": meta["config"]}
    if got != want:
        raise UserError(
            f"{path}: holds {got['arch']} {got['config']}, the config trains {want['arch']} {want['config']}; "
            "set model.arch / model.base_ch to match (--set)"
        )
    return params_dict(model)


def checkpoint_manager(workdir: Path, keep: int, track_best: bool) -> ocp.CheckpointManager:
    """Keeps the `keep` latest steps and, if `track_best`, the best by validation PSNR (steps
    without one don't compete); `best_step()` then names that step."""
    options = ocp.CheckpointManagerOptions(
        # Orbax writes the metrics passed to save() only when it tracks a best.
        best_fn=best_metric if track_best else None,
        best_mode="max",
        preservation_policy=policies.AnyPreservationPolicy(
            [
                policies.LatestN(keep),
                policies.BestN(get_metric_fn=best_metric, n=1, keep_checkpoints_without_metrics=False),
            ]
        ),
        # A run killed mid-save leaves a temporary directory; the rerun clears it.
        cleanup_tmp_directories=True,
    )
    return ocp.CheckpointManager(workdir / WORKDIR_CHECKPOINTS, options=options)


def _train_item(state: TrainState) -> dict[str, jax.Array]:
    # Orbax stores plain arrays: the typed key goes as its raw key data.
    return {"step": state.step, "rng": jax.random.key_data(state.rng)}


def _save_args(state: TrainState, meta: dict[str, Any], data_iter: grain.DatasetIterator) -> ocp.args.Composite:
    return ocp.args.Composite(
        **{
            PARAMS: ocp.args.StandardSave(state.params),
            META: ocp.args.JsonSave(meta),
            "opt_state": ocp.args.StandardSave(state.opt_state),
            "train": ocp.args.StandardSave(_train_item(state)),
            "data": grain.checkpoint.CheckpointSave(data_iter),
        }
    )


def _restore(
    mngr: ocp.CheckpointManager, step: int, state: TrainState, data_iter: grain.DatasetIterator
) -> TrainState:
    """`state` (for its structure and shardings) and `data_iter`, restored from `step`."""
    abstract = partial(jax.tree.map, ocp.utils.to_shape_dtype_struct)
    restored = mngr.restore(
        step,
        args=ocp.args.Composite(
            **{
                PARAMS: ocp.args.StandardRestore(abstract(state.params)),
                "opt_state": ocp.args.StandardRestore(abstract(state.opt_state)),
                "train": ocp.args.StandardRestore(abstract(_train_item(state))),
                "data": grain.checkpoint.CheckpointRestore(data_iter),
            }
        ),
    )
    train = restored["train"]
    rng = jax.random.wrap_key_data(train["rng"], impl=jax.random.key_impl(state.rng))
    return TrainState(restored[PARAMS], restored["opt_state"], train["step"], rng)


def _step_of(line: str) -> float:
    """The step a metrics.jsonl line is about; infinite for a line cut short by a kill."""
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError):
        return float("inf")


class RunLog:
    """metrics.jsonl, TensorBoard events and the progress bar; silent on all hosts but the first.

    On resume, lines and events after the restored step (written by the interrupted run) are
    dropped, so the files read as one uninterrupted run.
    """

    def __init__(self, workdir: Path, start: int, total: int, enabled: bool):
        self.enabled = enabled
        if not enabled:
            return
        self.path = workdir / METRICS_FILE
        kept = [line for line in self._lines() if _step_of(line) <= start]
        self.path.write_text("".join(kept))
        self.jsonl = self.path.open("a")
        self.tb = SummaryWriter(str(workdir / "tb"), purge_step=start + 1)
        self.bar = tqdm(total=total, initial=start, unit="step", dynamic_ncols=True, mininterval=1.0)

    def _lines(self) -> list[str]:
        return self.path.read_text().splitlines(keepends=True) if self.path.is_file() else []

    def write(self, step: int, values: dict[str, float], tb_prefix: str) -> None:
        if not self.enabled:
            return
        self.jsonl.write(json.dumps({"step": step, **values}) + "\n")
        self.jsonl.flush()
        for key, value in values.items():
            self.tb.add_scalar(f"{tb_prefix}/{key}", value, step)
        self.tb.flush()

    def progress(self, step: int, values: dict[str, float]) -> None:
        if not self.enabled:
            return
        self.bar.set_postfix(loss=f"{values['loss']:.3f}", lr=f"{values['lr']:.2e}", refresh=False)
        self.bar.update(step - self.bar.n)

    def close(self) -> None:
        if self.enabled:
            self.bar.close()
            self.jsonl.close()
            self.tb.close()


def validate(
    denoiser: Denoiser, graphdef: nnx.GraphDef, params: dict, val: tuple[np.ndarray, np.ndarray], cfg: Config
) -> dict[str, float]:
    """Mean PSNR / SSIM of the validation subset under the release's full default inference."""
    # One host-local copy of the replicated parameters: validation runs on this host's first
    # device (every host computes the same scores, which each host's manager records).
    local = jax.tree.map(lambda a: a.addressable_data(0), params)
    denoiser.state = nnx.state(nnx.merge(graphdef, local))
    noisy, clean = val
    scores = sidd_eval.score_validation(denoiser, noisy, clean, cfg.seed, cfg.val.batch_size)
    return {"psnr": scores["psnr"], "ssim": scores["ssim"]}


def train(cfg: Config, workdir: Path) -> int:
    """Trains (or resumes) the run in `workdir`; returns the exit status of the final evaluation."""
    workdir = workdir.absolute()
    lead = jax.process_index() == 0
    mesh = meshlib.make_mesh(cfg.train.batch_size)
    # Data first: a wrong folder fails in seconds, before anything is compiled.
    paths = training_images(cfg.data, workdir)
    val_dir = validation_dir(cfg)
    val = None
    if val_dir is not None:
        noisy, clean = sidd_eval.load_validation(val_dir)
        k = cfg.val.blocks_per_image or noisy.shape[1]
        val = noisy[:, :k], clean[:, :k]
    save_resolved(cfg, workdir, write=lead)
    steps_per_epoch = cfg.train.steps_per_epoch or max(1, len(paths) // cfg.train.batch_size)
    total_steps = cfg.train.epochs * steps_per_epoch
    last_step = min(total_steps, cfg.train.max_steps or total_steps)
    save_every = cfg.checkpoint.every or steps_per_epoch

    def new_model() -> nnx.Module:
        return family.build(cfg.model.arch, {"base_ch": cfg.model.base_ch}, nnx.Rngs(cfg.seed))

    abstract_model = nnx.eval_shape(new_model)
    graphdef = nnx.graphdef(abstract_model)
    init_params = initial_params(cfg.model.init, abstract_model) if cfg.model.init else None
    meta = model_meta(abstract_model, trained_with=cfg.name)
    schedule = lr_schedule(cfg.optim, steps_per_epoch)
    tx = optimizer(cfg.optim, schedule)
    state = jax.jit(partial(init_state, new_model, tx, cfg.seed), out_shardings=meshlib.replicated(mesh))()
    if init_params is not None:
        # Adam's initial state holds zeros and a count, not the parameters' values, so only
        # the parameters change; a resumed run restores its own below.
        state = state._replace(params=jax.jit(lambda p: p, out_shardings=meshlib.replicated(mesh))(init_params))
    # One denoiser for the run, so that its compiled inference is reused: it holds shapes only
    # until `validate` swaps in the current parameters.
    denoiser = Denoiser(abstract_model, default_inference(meta))

    batches = training_batches(
        paths,
        crop=cfg.data.crop,
        global_batch=cfg.train.batch_size,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    data_iter = batch_iterator(batches, cfg.data.workers)
    step_fn = jax.jit(
        partial(train_step, graphdef, tx, schedule, cfg.train),
        out_shardings=meshlib.replicated(mesh),
        donate_argnums=0,
    )

    with checkpoint_manager(workdir, cfg.checkpoint.keep, track_best=val is not None) as mngr:
        start = mngr.latest_step() or 0
        if start:
            state = _restore(mngr, start, state, data_iter)
        if lead:
            print(
                f"{cfg.name}: {len(paths)} training images, {steps_per_epoch} steps per epoch, "
                f"{'resuming at' if start else 'starting at'} step {start} of {last_step}, "
                f"{jax.device_count()} devices; workdir {workdir}",
                flush=True,
            )
        log = RunLog(workdir, start, last_step, lead)

        def next_batch() -> jax.Array:
            return meshlib.global_batch(next(data_iter), mesh)

        try:
            batch = next_batch() if start < last_step else None
            for step in range(start + 1, last_step + 1):
                state, metrics = step_fn(state, batch)  # dispatched: the devices work from here on
                checkpoint_now = step % save_every == 0 or step == last_step
                if not checkpoint_now:
                    # The next batch is read and sent to the devices while this step runs. Not
                    # before a checkpoint, which records the data iterator after `step` batches.
                    batch = next_batch()
                if step % cfg.log.every == 0 or step == last_step:
                    values = {k: float(v) for k, v in metrics.items()}
                    log.write(step, values, "train")
                    log.progress(step, values)
                if checkpoint_now:
                    scores = validate(denoiser, graphdef, state.params, val, cfg) if val else None
                    if scores:
                        log.write(step, scores, "val")
                    mngr.save(step, args=_save_args(state, meta, data_iter), metrics=scores)
                    if step < last_step:
                        batch = next_batch()
            mngr.wait_until_finished()
        finally:
            log.close()
            data_iter.close()

    if val_dir is None or not lead:
        return 0
    # The final score is evaluate.py's own report on the best (else latest) checkpoint.
    argv = ["--ckpt", str(workdir), "--sidd-val", str(val_dir), "--json", str(workdir / EVAL_FILE)]
    return evaluation_cli.main([*argv, "--seed", str(cfg.seed), "--batch", str(cfg.val.batch_size)])
