"""The training loop: data, state, resume, steps, validation, checkpoints, final evaluation.

Every step directory of `<workdir>/checkpoints` holds the shared items `params` and `meta`
(see `ambsn_jax.checkpoint.store`, so `evaluate.py --ckpt <workdir>` loads it) beside
training's own (`store.TRAINING_ITEMS`: optimizer state, step and RNG key, and the Grain
iterator's position).
Rerunning the same command resumes from the latest step; given the seed, the resumed run's
numbers are those of an uninterrupted one.
"""

from __future__ import annotations

import json
import signal
import sys
from contextlib import nullcontext
from functools import partial
from pathlib import Path

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from tensorboardX import SummaryWriter
from tqdm import tqdm

from ambsn_jax import mesh as meshlib
from ambsn_jax.checkpoint import store
from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.data.check import checked_images
from ambsn_jax.data.demo import demo_root
from ambsn_jax.data.pipeline import batch_iterator, training_batches
from ambsn_jax.data.sidd import find_noisy_images, prepare_patches
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation import sidd as sidd_eval
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.release import default_inference
from ambsn_jax.nets import registry
from ambsn_jax.train import distill, nonfinite, recovery
from ambsn_jax.train.preemption import Preemption, exit_status
from ambsn_jax.train.workdir_lock import hold_workdir
from ambsn_jax.train.config import Config, DataSection, save_resolved
from ambsn_jax.train.step import (
    TrainState,
    init_state,
    lr_schedule,
    optimizer,
    Recipe,
    served,
    train_step,
)

METRICS_FILE = "metrics.jsonl"
EVAL_FILE = "eval.json"
PROFILE_DIR = "profile"


class Profiler:
    """A `jax.profiler` trace of steps [first, last] (TensorBoard's profile plugin reads it)."""

    def __init__(self, steps: list[int] | None, out: Path, enabled: bool):
        self.first, self.last = steps if steps and enabled else (0, -1)
        self.out = out
        self.running = False

    def before(self, step: int) -> None:
        if step == self.first:
            jax.profiler.start_trace(str(self.out))
            self.running = True

    def after(self, step: int, metrics: dict[str, jax.Array]) -> None:
        if self.running and step == self.last:
            jax.block_until_ready(metrics)  # the trace holds the steps' device work, not just their dispatch
            self.close()

    def close(self) -> None:
        if self.running:
            jax.profiler.stop_trace()
            self.running = False


def training_images(cfg: DataSection, workdir: Path) -> list[Path]:
    """The images crops are drawn from: the noisy images of the data folder, or its patches."""
    root = demo_root() / "SIDD_Medium_Srgb" if cfg.dir == "demo" else Path(cfg.dir)
    if not cfg.patches:
        return checked_images(find_noisy_images(root), cfg.crop, cfg.skip_bad)
    patch_dir = Path(cfg.patch_dir) if cfg.patch_dir else workdir / "patches"
    return prepare_patches(root, patch_dir, cfg.patch_size, cfg.patch_stride, cfg.crop, cfg.skip_bad)


def validation_dir(cfg: Config) -> Path | None:
    """The folder of SIDD-format validation blocks, if the config validates."""
    if cfg.val.dir is None:
        return None
    return demo_root() if cfg.val.dir == "demo" else Path(cfg.val.dir)


def validation_subset(val_dir: Path, blocks_per_image: int | None) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) blocks that validation during training scores: the first
    `blocks_per_image` of each image (all when None)."""
    noisy, clean = sidd_eval.load_validation(val_dir)
    k = blocks_per_image or noisy.shape[1]
    return noisy[:, :k], clean[:, :k]


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
    teacher = "" if cfg.distill.teacher is None else f", distilled from {distill.teacher_path(cfg.distill.teacher)}"
    return CheckpointMeta.for_network(
        cfg.model.arch,
        config,
        train_pd=cfg.train.pd,
        train_pd_pad=cfg.train.pd_pad,
        source=f"config {cfg.name}{teacher}",
        ema_decay=cfg.optim.ema_decay,
    )


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


def _scalar(value: int, mesh: jax.sharding.Mesh) -> jax.Array:
    """An int32 scalar on every device of the mesh (every process passes the same value)."""
    return jax.make_array_from_callback((), meshlib.replicated(mesh), lambda _: np.int32(value))


def _save_args(
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


def _restore(
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

    def images(self, step: int, rows: list[np.ndarray]) -> None:
        """Validation blocks as TensorBoard images, each a row noisy | denoised | clean."""
        if not self.enabled:
            return
        for i, row in enumerate(rows):
            self.tb.add_image(f"val/block{i}", row, step, dataformats="HWC")
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


def validation_scores(
    denoiser: BatchDenoiser, params: dict, val: tuple[np.ndarray, np.ndarray], cfg: Config
) -> tuple[dict[str, float], list[np.ndarray]]:
    """Mean PSNR / SSIM of the validation subset under the release's full default inference,
    its blocks split over the training mesh (every host gets the same scores, which each
    host's manager records), and the first `log.images` blocks as noisy | denoised | clean rows."""
    noisy, clean = val
    scores = sidd_eval.score_validation(denoiser.bind(params), noisy, clean, cfg.seed, cfg.val.batch_size, keep_outputs=True)
    flat_noisy, flat_clean = (v.reshape(-1, *v.shape[2:]) for v in val)
    shown = range(min(cfg.log.images, len(flat_noisy)))
    rows = [np.concatenate([flat_noisy[i], scores["denoised"][i], flat_clean[i]], axis=1) for i in shown]
    return {"psnr": scores["psnr"], "ssim": scores["ssim"]}, rows


def train(cfg: Config, workdir: Path) -> int:
    """Trains (or resumes) the run in `workdir`, then scores its best checkpoint; returns the
    exit status: 0, or 128 + the signal's number when SIGTERM / SIGINT stopped it
    (checkpointed, resumable: `ambsn_jax.train.preemption`)."""
    workdir = workdir.absolute()
    # Workdirs are shared between hosts: the lead process's lock stands for the whole run.
    with hold_workdir(workdir) if jax.process_index() == 0 else nullcontext():
        return _train(cfg, workdir)


def _train(cfg: Config, workdir: Path) -> int:
    lead = jax.process_index() == 0
    mesh = meshlib.make_mesh(cfg.train.batch_size)
    # Data first: a wrong folder fails in seconds, before anything is compiled.
    paths = training_images(cfg.data, workdir)
    val_dir = validation_dir(cfg)
    val = None if val_dir is None else validation_subset(val_dir, cfg.val.blocks_per_image)
    save_resolved(cfg, workdir, write=lead)
    recipe = Recipe.of(cfg)
    sources = paths
    if cfg.distill.teacher is not None:
        targets = Path(cfg.distill.targets_dir) if cfg.distill.targets_dir else workdir / distill.TARGETS_DIR
        sources = distill.teacher_targets(cfg.distill.teacher, paths, targets, cfg.seed, recipe.precision)
    steps_per_epoch = cfg.train.steps_per_epoch or max(1, len(paths) // cfg.train.batch_size)
    total_steps = cfg.train.epochs * steps_per_epoch
    last_step = min(total_steps, cfg.train.max_steps or total_steps)
    save_every = cfg.checkpoint.every or steps_per_epoch

    meta = training_meta(cfg)
    init_params = initial_params(cfg.model.init, meta) if cfg.model.init else None
    graphdef = registry.graphdef(meta.arch, meta.config)
    schedule = lr_schedule(cfg.optim, steps_per_epoch)
    tx = optimizer(cfg.optim, schedule)
    new_model = partial(registry.build, meta.arch, meta.config, cfg.seed)
    state = jax.jit(partial(init_state, new_model, tx, cfg.seed, recipe), out_shardings=meshlib.replicated(mesh))()
    if init_params is not None:
        # Adam's initial state holds zeros and a count, not the parameters' values, so only
        # the parameters change; a resumed run restores its own below.
        params = jax.jit(lambda p: p, out_shardings=meshlib.replicated(mesh))(init_params)
        state = state._replace(params=params, ema=None if state.ema is None else params)
    # One compiled inference for the run: each validation binds the current parameters to it.
    inference = default_inference(meta, precision=recipe.precision)
    denoiser = BatchDenoiser(meta.arch, meta.config, inference, mesh)

    batches = training_batches(
        sources,
        crop=cfg.data.crop,
        global_batch=cfg.train.batch_size,
        seed=cfg.seed,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
    )
    data_iter = batch_iterator(batches, cfg.data.workers)
    step_fn = jax.jit(
        partial(train_step, graphdef, tx, schedule, recipe),
        out_shardings=meshlib.replicated(mesh),
        donate_argnums=0,
    )

    ckpt_dir = workdir / store.WORKDIR_CHECKPOINTS
    with (
        checkpoint_manager(workdir, cfg.checkpoint.keep, track_best=val is not None) as mngr,
        recovery.HeldErrors() as held,
    ):
        # The newest step that restores; broken newer ones are set aside (recovery).
        found = recovery.restore_latest_good(mngr, lambda step: _restore(mngr, step, state, data_iter, _scalar(0, mesh)))
        start, (state, skipped) = found if found else (0, (state, 0))
        if lead:
            print(
                f"{cfg.name}: {len(paths)} training images, {steps_per_epoch} steps per epoch, "
                f"{'resuming at' if start else 'starting at'} step {start} of {last_step}, "
                f"{jax.device_count()} devices; workdir {workdir}",
                flush=True,
            )
        log = RunLog(workdir, start, last_step, lead)

        def next_batch() -> jax.Array:
            # A copy: Grain's batch lives in shared memory, which JAX on a CPU would otherwise
            # keep mapped for as long as the array lives, past the iterator's close, so that
            # the segment outlives the run (Python's resource tracker then warns of a leak).
            return meshlib.shard_batch(np.array(next(data_iter)), mesh)

        profiler = Profiler(cfg.train.profile_steps, workdir / PROFILE_DIR, lead)
        preemption = Preemption(mesh)
        skip = cfg.train.skip_nonfinite
        stopped_at = None
        # The step whose non-finite flag is still to read: read once the next step is
        # dispatched, so that the host never waits for the devices between steps, and always
        # before a log line or a checkpoint (no checkpoint ever holds a non-finite state).
        unread: tuple[int, dict[str, jax.Array]] | None = None

        def read_flag() -> None:
            nonlocal unread, skipped
            if unread is not None:
                skipped += nonfinite.check(*unread, skip, mngr)
                unread = None

        try:
            batch = next_batch() if start < last_step else None
            with preemption:
                for step in range(start + 1, last_step + 1):
                    profiler.before(step)
                    state, metrics = step_fn(state, batch)  # dispatched: the devices work from here on
                    read_flag()
                    unread = (step, metrics)
                    stop = preemption.stop_now()
                    checkpoint_now = step % save_every == 0 or step == last_step or stop
                    if not checkpoint_now:
                        # The next batch is read and sent to the devices while this step runs. Not
                        # before a checkpoint, which records the data iterator after `step` batches.
                        batch = next_batch()
                    if step % cfg.log.every == 0 or step == last_step:
                        read_flag()
                        values = {k: float(v) for k, v in metrics.items() if k != "nonfinite"}
                        if skip:
                            values[nonfinite.SKIPPED] = skipped
                        log.write(step, values, "train")
                        log.progress(step, values)
                    profiler.after(step, metrics)
                    if checkpoint_now:
                        read_flag()
                        scores = None
                        # A stop skips validation: the grace period is short, and the scores
                        # change nothing that training does.
                        if val and not stop:
                            scores, rows = validation_scores(denoiser, served(state), val, cfg)
                            log.write(step, scores, "val")
                            log.images(step, rows)
                        with recovery.save_errors(ckpt_dir):
                            mngr.save(step, args=_save_args(state, meta, data_iter, _scalar(skipped, mesh)), metrics=scores)
                        if stop:
                            break
                        if step < last_step:
                            batch = next_batch()
                read_flag()
                with recovery.save_errors(ckpt_dir):
                    mngr.wait_until_finished()
            if preemption.signum is not None:
                # Also a signal during the last step's save: the final evaluation would outlast the grace period.
                stopped_at = mngr.latest_step()
        finally:
            profiler.close()
            log.close()
            data_iter.close()
    if stopped_at is not None:
        if lead:
            name = signal.Signals(preemption.signum).name
            print(f"{name}: stopped at step {stopped_at}, checkpoint saved in {ckpt_dir}; "
                  "rerun the same command to resume", file=sys.stderr, flush=True)  # fmt: skip
        return exit_status(preemption.signum)

    return _final_evaluation(cfg, workdir, val_dir, denoiser, last_step, total_steps)


def _final_evaluation(
    cfg: Config, workdir: Path, val_dir: Path | None, denoiser: BatchDenoiser, last_step: int, total_steps: int
) -> int:
    """After the last step: `evaluate.py`'s own report on the best (else latest) checkpoint,
    written to `EVAL_FILE`, and the closing lines; 0."""
    lead = jax.process_index() == 0
    if val_dir is None:
        if not lead:
            return 0
        print(
            "no validation set was given, so no checkpoint was scored and the latest is kept as the result; "
            "to score during training, add --set val.dir=<folder of SIDD validation .mat files>"
        )
        _say_where(workdir, last_step, total_steps)
        return 0
    best = store.load_checkpoint(workdir)
    report = sidd_eval.evaluate_validation(best, val_dir, denoiser.cfg, cfg.seed, cfg.val.batch_size, denoiser=denoiser)
    if not lead:
        return 0
    report["training"] = {"steps": last_step, "of_steps": total_steps, "stopped_early": last_step < total_steps}
    sidd_eval.write_json(workdir / EVAL_FILE, report)
    print(f"step {best.step} (best by validation PSNR): {sidd_eval.summary_line(report)}")
    _say_where(workdir, last_step, total_steps)
    return 0


def _say_where(workdir: Path, last_step: int, total_steps: int) -> None:
    """The closing lines: how far the run got, where its results are and how to use them."""
    if last_step < total_steps:
        print(
            f"stopped early at step {last_step} of {total_steps} (--max-steps): the weights and any score are "
            "those of a run cut short; rerun without --max-steps to finish it"
        )
    print(f"checkpoints: {workdir / store.WORKDIR_CHECKPOINTS}; logs: {workdir / METRICS_FILE}, {workdir / 'tb'}")
    print(f"use them: python evaluate.py --ckpt {workdir} --input PHOTOS --output OUT")
