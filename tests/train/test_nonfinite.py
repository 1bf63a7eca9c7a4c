"""A NaN or an infinity in training (ambsn_jax.train.nonfinite and the step's flag): stop at
that step without a non-finite checkpoint, or skip it (train.skip_nonfinite) and count it."""

from __future__ import annotations

import json
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambsn_jax.checkpoint.store import load_checkpoint
from ambsn_jax.cli.train import main
from ambsn_jax.nets import registry
from ambsn_jax.train.config import OptimSection
from ambsn_jax.train.checkpoints import checkpoint_manager
from ambsn_jax.train.runlog import METRICS_FILE
from ambsn_jax.train.step import Recipe, init_state, lr_schedule, optimizer, train_step
from tests.helpers import one_error_line, write_png

OPTIM = OptimSection(lr=1e-3, b1=0.9, b2=0.999, decay_every_epochs=1, decay_rate=1.0, warmup_steps=0, grad_clip=None, ema_decay=None)


@pytest.mark.parametrize("skip", [True, False])
def test_the_step_flags_a_nan_and_keeps_the_state_when_skipping(skip):
    config = registry.network_config("ambsn", {"base_ch": 4})
    graphdef = registry.graphdef("ambsn", config)
    schedule = lr_schedule(OPTIM, 10)
    tx = optimizer(OPTIM, schedule)
    recipe = Recipe(pd=5, pd_pad=2, pd_shuffle=False, accum_steps=1, precision="highest", ema_decay=0.9, skip_nonfinite=skip)
    state = init_state(partial(registry.build, "ambsn", config, 0), tx, 0, recipe)
    step = jax.jit(partial(train_step, graphdef, tx, schedule, recipe))
    batch = np.random.default_rng(0).uniform(0, 255, (2, 20, 20, 3)).astype(np.float32)

    good, metrics = step(state, jnp.asarray(batch))
    assert not bool(metrics["nonfinite"]) and np.isfinite(float(metrics["loss"]))
    batch[0, 3, 4, 1] = np.nan
    after, metrics = step(good, jnp.asarray(batch))
    assert bool(metrics["nonfinite"]) and int(after.step) == 2
    leaves = lambda s: jax.tree.leaves((s.params, s.opt_state, s.ema))  # noqa: E731
    if skip:
        for new, old in zip(leaves(after), leaves(good)):
            np.testing.assert_array_equal(np.asarray(new), np.asarray(old))
    else:
        assert not all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(after.params))


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for i in range(4):
        write_png(folder / f"img{i}.png", (24, 28, 3), seed=i)
    return folder


def tiny(images, workdir, *extra):
    return ["--config", "demo", "--data-dir", str(images), "--workdir", str(workdir), "--max-steps", "6", "--save-every", "1",
            "--set", "model.base_ch=4", "data.patches=false", "data.crop=20", "data.workers=0", "train.batch_size=2",
            "train.steps_per_epoch=4", "val.dir=null", "log.every=1", "optim.lr=3e38", *extra]  # fmt: skip


def test_an_overflowing_learning_rate_stops_at_the_step_and_keeps_good_checkpoints(images, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(tiny(images, workdir)) == 2
    line = one_error_line(_last_lines(capsys), "not finite")
    bad = int(line.split("error: step ")[1].split(":")[0])
    assert "optim.lr" in line and "train.skip_nonfinite=true" in line
    assert f"the last good checkpoint is step {bad - 1} in {workdir / 'checkpoints'}" in line
    with checkpoint_manager(workdir, keep=3, track_best=False) as mngr:
        assert max(mngr.all_steps()) == bad - 1
    loaded = load_checkpoint(workdir)
    assert loaded.step == bad - 1
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(loaded.params))


def _last_lines(capsys) -> str:
    # The progress bar draws with carriage returns on stderr; the error line is its own line after it.
    err = capsys.readouterr().err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip() and "step/s" not in line and "it/s" not in line and "%|" not in line]
    return "\n".join(lines)


def test_skip_nonfinite_skips_the_updates_and_counts_them_across_a_resume(images, tmp_path, capsys):
    workdir = tmp_path / "run"
    assert main(tiny(images, workdir, "train.skip_nonfinite=true", "--max-steps", "2")) == 0
    assert main(tiny(images, workdir, "train.skip_nonfinite=true", "--max-steps", "4")) == 0
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    counts = [line["skipped_nonfinite"] for line in lines]
    assert [line["step"] for line in lines] == list(range(1, 5))
    # Every step from the first overflow on is skipped, and the count goes on after the resume.
    first = next(i for i, c in enumerate(counts) if c)
    assert first <= 1 and counts == [0] * first + list(range(1, 5 - first))
    loaded = load_checkpoint(workdir)
    assert loaded.step == 4
    assert all(np.isfinite(np.asarray(leaf)).all() for leaf in jax.tree.leaves(loaded.params))
