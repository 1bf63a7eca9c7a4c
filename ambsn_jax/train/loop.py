"""The training loop: prepare the run, resume it, take its steps, checkpoint, evaluate.

Rerunning the same command resumes from the latest step; given the seed, the resumed run's
numbers are those of an uninterrupted one. What a step saves is `train.checkpoints`'s, what
it reports `train.runlog`'s, validation and the closing evaluation `train.validation`'s.
"""

from __future__ import annotations

import dataclasses
import signal
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path
from typing import Any

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from ambsn_jax import mesh as meshlib
from ambsn_jax.checkpoint import store
from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.data.check import checked_images
from ambsn_jax.data.demo import demo_root
from ambsn_jax.data.pipeline import batch_iterator, training_batches
from ambsn_jax.data.sidd import find_noisy_images, prepare_patches
from ambsn_jax.errors import UserError
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.release import default_inference
from ambsn_jax.nets import registry
from ambsn_jax.train import checkpoints, distill, nonfinite, recovery, validation
from ambsn_jax.train.config import Config, DataSection, save_resolved
from ambsn_jax.train.preemption import Preemption, exit_status
from ambsn_jax.train.runlog import PROFILE_DIR, Profiler, RunLog
from ambsn_jax.train.step import TrainState, init_state, lr_schedule, optimizer, Recipe, served, train_step
from ambsn_jax.train.workdir_lock import hold_workdir


def training_images(cfg: DataSection, workdir: Path) -> list[Path]:
    """The images crops are drawn from: the noisy images of the data folder, or its patches."""
    root = demo_root() / "SIDD_Medium_Srgb" if cfg.dir == "demo" else Path(cfg.dir)
    if not cfg.patches:
        return checked_images(find_noisy_images(root), cfg.crop, cfg.skip_bad)
    patch_dir = Path(cfg.patch_dir) if cfg.patch_dir else workdir / "patches"
    return prepare_patches(root, patch_dir, cfg.patch_size, cfg.patch_stride, cfg.crop, cfg.skip_bad)


def initial_params(path: str, meta: CheckpointMeta) -> dict:
    """The parameters of checkpoint `path`, which must hold the network `meta` describes."""
    loaded = store.load_checkpoint(path)
    want, got = (meta.arch, meta.config), (loaded.meta.arch, loaded.meta.config)
    if got != want:
        raise UserError(
            f"{path}: holds {got[0]} {got[1]}, the config trains {want[0]} {want[1]}; "
            "set model.arch / model.base_ch to match (--set)"
        )
    return loaded.params


def training_meta(cfg: Config) -> CheckpointMeta:
    """The metadata of the run's checkpoints: the network, the PD it trains with, and which
    weights they serve."""
    config = registry.network_config(cfg.model.arch, cfg.network_fields())
    teacher = ""
    if cfg.distill.teacher is not None:
        note = distill.source_note(cfg.distill.teacher, tuple(cfg.distill.recharge), cfg.data.fresh_noise)
        teacher = f", {note}"
    return CheckpointMeta.for_network(
        cfg.model.arch,
        config,
        train_pd=cfg.train.pd,
        train_pd_pad=cfg.train.pd_pad,
        source=f"config {cfg.name}{teacher}",
        ema_decay=cfg.optim.ema_decay,
    )


@dataclasses.dataclass(frozen=True)
class Steps:
    """How long the run is and when it checkpoints, in steps."""

    per_epoch: int
    total: int  # what the config asks for
    last: int  # where this run stops (`--max-steps` may cut it short)
    save_every: int

    @classmethod
    def of(cls, cfg: Config, n_images: int) -> Steps:
        per_epoch = cfg.train.steps_per_epoch or max(1, n_images // cfg.train.batch_size)
        total = cfg.train.epochs * per_epoch
        return cls(per_epoch, total, min(total, cfg.train.max_steps or total), cfg.checkpoint.every or per_epoch)


@dataclasses.dataclass
class Run:
    """Everything a run prepared before its first step: data, state, compiled programs."""

    cfg: Config
    workdir: Path
    mesh: jax.sharding.Mesh
    n_images: int
    val_dir: Path | None
    val: tuple[np.ndarray, np.ndarray] | None
    steps: Steps
    meta: CheckpointMeta
    state: TrainState
    denoiser: BatchDenoiser  # one compiled inference: each validation binds the current parameters
    data_iter: grain.DatasetIterator
    step_fn: Any  # the jitted train step (state, batch) -> (state, metrics)

    def next_batch(self) -> jax.Array:
        # A copy: Grain's batch lives in shared memory, which JAX on a CPU would otherwise keep
        # mapped for as long as the array lives, past the iterator's close, so that the segment
        # outlives the run (Python's resource tracker then warns of a leak).
        return meshlib.shard_batch(np.array(next(self.data_iter)), self.mesh)


def train(cfg: Config, workdir: Path) -> int:
    """Trains (or resumes) the run in `workdir`, then scores its best checkpoint; returns the
    exit status: 0, or 128 + the signal's number when SIGTERM / SIGINT stopped it
    (checkpointed, resumable: `ambsn_jax.train.preemption`)."""
    workdir = workdir.absolute()
    # Workdirs are shared between hosts: the lead process's lock stands for the whole run.
    with hold_workdir(workdir) if jax.process_index() == 0 else nullcontext():
        run = prepare(cfg, workdir)
        signum = _resume_and_train(run)
        if signum is not None:
            return exit_status(signum)
        return validation.final_evaluation(cfg, workdir, run.val_dir, run.denoiser, run.steps.last, run.steps.total)


def prepare(cfg: Config, workdir: Path) -> Run:
    """The run's data (checked first: a wrong folder fails in seconds, before anything is
    compiled), its resolved config in the workdir, its initial state and programs."""
    lead = jax.process_index() == 0
    mesh = meshlib.make_mesh(cfg.train.batch_size)
    paths = training_images(cfg.data, workdir)
    val_dir = validation.validation_dir(cfg)
    val = None if val_dir is None else validation.validation_subset(val_dir, cfg.val.blocks_per_image)
    save_resolved(cfg, workdir, write=lead)
    recipe = Recipe.of(cfg)
    sources = paths
    if cfg.data.fresh_noise:
        sources = distill.clean_sources(paths)
    elif cfg.distill.teacher is not None:
        targets = Path(cfg.distill.targets_dir) if cfg.distill.targets_dir else workdir / distill.TARGETS_DIR
        sources = distill.teacher_targets(
            cfg.distill.teacher, paths, targets, cfg.seed, recipe.precision, tuple(cfg.distill.recharge)
        )
    steps = Steps.of(cfg, len(paths))
    meta = training_meta(cfg)
    schedule = lr_schedule(cfg.optim, steps.per_epoch)
    tx = optimizer(cfg.optim, schedule)
    state = _initial_state(cfg, meta, recipe, tx, mesh)
    denoiser = BatchDenoiser(meta.arch, meta.config, default_inference(meta, precision=recipe.precision), mesh)
    batches = training_batches(
        sources,
        crop=cfg.data.crop,
        global_batch=cfg.train.batch_size,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        fresh_noise=cfg.data.fresh_noise,
    )
    step_fn = jax.jit(
        partial(train_step, registry.graphdef(meta.arch, meta.config), tx, schedule, recipe),
        out_shardings=meshlib.replicated(mesh),
        donate_argnums=0,
    )
    data_iter = batch_iterator(batches, cfg.data.workers)
    return Run(cfg, workdir, mesh, len(paths), val_dir, val, steps, meta, state, denoiser, data_iter, step_fn)


def _initial_state(cfg: Config, meta: CheckpointMeta, recipe: Recipe, tx: Any, mesh: jax.sharding.Mesh) -> TrainState:
    """A fresh state, replicated over the mesh; with `model.init`, that checkpoint's parameters."""
    init_params = initial_params(cfg.model.init, meta) if cfg.model.init else None
    new_model = partial(registry.build, meta.arch, meta.config, cfg.seed)
    state = jax.jit(partial(init_state, new_model, tx, cfg.seed, recipe), out_shardings=meshlib.replicated(mesh))()
    if init_params is None:
        return state
    # Adam's initial state holds zeros and a count, not the parameters' values, so only the
    # parameters change; a resumed run restores its own.
    params = jax.jit(lambda p: p, out_shardings=meshlib.replicated(mesh))(init_params)
    # The average starts as its own copy: the train step donates the state, and XLA refuses one
    # buffer donated twice.
    ema = None if state.ema is None else jax.tree.map(lambda x: x.copy(), params)
    return state._replace(params=params, ema=ema)


def _resume_and_train(run: Run) -> int | None:
    """Resumes from the newest step that restores (broken newer ones are set aside) and trains
    to the last step; the signal's number if SIGTERM / SIGINT stopped it, else None."""
    lead = jax.process_index() == 0
    cfg, ckpt_dir = run.cfg, run.workdir / store.WORKDIR_CHECKPOINTS
    with (
        checkpoints.checkpoint_manager(run.workdir, cfg.checkpoint.keep, track_best=run.val is not None) as mngr,
        recovery.HeldErrors(),
    ):
        zero = checkpoints.scalar(0, run.mesh)
        found = recovery.restore_latest_good(mngr, lambda s: checkpoints.restore(mngr, s, run.state, run.data_iter, zero))
        start, (run.state, skipped) = found if found else (0, (run.state, 0))
        if lead:
            print(
                f"{cfg.name}: {run.n_images} training images, {run.steps.per_epoch} steps per epoch, "
                f"{'resuming at' if start else 'starting at'} step {start} of {run.steps.last}, "
                f"{jax.device_count()} devices; workdir {run.workdir}",
                flush=True,
            )
        log = RunLog(run.workdir, start, run.steps.last, lead)
        profiler = Profiler(cfg.train.profile_steps, run.workdir / PROFILE_DIR, lead)
        preemption = Preemption(run.mesh)
        flag = nonfinite.DeferredFlag(cfg.train.skip_nonfinite, mngr, skipped)
        try:
            with preemption:
                _take_steps(run, start, mngr, log, profiler, preemption, flag)
                flag.read()
                with recovery.save_errors(ckpt_dir):
                    mngr.wait_until_finished()
            # Also a signal during the last step's save: the final evaluation would outlast the grace period.
            stopped_at = None if preemption.signum is None else mngr.latest_step()
        finally:
            profiler.close()
            log.close()
            run.data_iter.close()
    if stopped_at is None:
        return None
    if lead:
        name = signal.Signals(preemption.signum).name
        print(f"{name}: stopped at step {stopped_at}, checkpoint saved in {ckpt_dir}; "
              "rerun the same command to resume", file=sys.stderr, flush=True)  # fmt: skip
    return preemption.signum


def _take_steps(
    run: Run,
    start: int,
    mngr: ocp.CheckpointManager,
    log: RunLog,
    profiler: Profiler,
    preemption: Preemption,
    flag: nonfinite.DeferredFlag,
) -> None:
    """Steps start + 1 .. last, each checkpointed on schedule or when a stop is voted."""
    steps = run.steps
    batch = run.next_batch() if start < steps.last else None
    for step in range(start + 1, steps.last + 1):
        profiler.before(step)
        run.state, metrics = run.step_fn(run.state, batch)  # dispatched: the devices work from here on
        flag.defer(step, metrics)
        stop = preemption.stop_now()
        checkpoint_now = step % steps.save_every == 0 or step == steps.last or stop
        if not checkpoint_now:
            # The next batch is read and sent to the devices while this step runs. Not before a
            # checkpoint, which records the data iterator after `step` batches.
            batch = run.next_batch()
        if step % run.cfg.log.every == 0 or step == steps.last:
            flag.read()
            values = {k: float(v) for k, v in metrics.items() if k != "nonfinite"}
            if flag.skip:
                values[nonfinite.SKIPPED] = flag.skipped
            log.write(step, values, "train")
            log.progress(step, values)
        profiler.after(step, metrics)
        if checkpoint_now:
            flag.read()
            _save_step(run, step, mngr, log, flag.skipped, validate=not stop)
            if stop:
                return
            if step < steps.last:
                batch = run.next_batch()


def _save_step(run: Run, step: int, mngr: ocp.CheckpointManager, log: RunLog, skipped: int, validate: bool) -> None:
    """Step `step`'s checkpoint, with its validation scores when validating. A stop skips
    validation: the grace period is short, and the scores change nothing that training does."""
    scores = None
    if run.val and validate:
        scores, rows = validation.validation_scores(run.denoiser, served(run.state), run.val, run.cfg)
        log.write(step, scores, "val")
        log.images(step, rows)
    with recovery.save_errors(run.workdir / store.WORKDIR_CHECKPOINTS):
        args = checkpoints.save_args(run.state, run.meta, run.data_iter, checkpoints.scalar(skipped, run.mesh))
        mngr.save(step, args=args, metrics=scores)
