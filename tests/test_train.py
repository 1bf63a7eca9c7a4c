"""Tests of training: the step against PyTorch, configs, the Grain pipeline, devices, resume.

Runs use a tiny network (C = 8) on 20 x 20 crops of small random images, so that compiling
dominates and every run takes seconds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import socket
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import cv2
import grain
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
import torch
import yaml
from flax import nnx

from ambsn_jax import torch_port
from ambsn_jax.checkpoint import META, PARAMS, load_model, model_meta, params_dict
from ambsn_jax.data.pipeline import augment, batch_iterator, training_batches
from ambsn_jax.data.sidd import save_blocks_mat
from ambsn_jax.errors import UserError
from ambsn_jax.model import AMBSN, AMBSNConfig
from ambsn_jax.train import config as configlib
from ambsn_jax.train.cli import main
from ambsn_jax.train.loop import EVAL_FILE, METRICS_FILE, checkpoint_manager
from ambsn_jax.train.step import TrainState, l1_loss, lr_schedule, optimizer, train_step

ROOT = Path(__file__).resolve().parents[1]
STEPS = 12


def write_images(folder: Path, count: int, size: tuple[int, int] = (36, 44), seed: int = 0) -> list[Path]:
    """Smooth random colour images (blurred noise), as PNG files."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        image = cv2.GaussianBlur(rng.uniform(0, 255, (*size, 3)).astype(np.float32), (0, 0), 2)
        path = folder / f"img{i:02d}.png"
        cv2.imwrite(str(path), np.clip(image * 3 - 255, 0, 255).astype(np.uint8))
        paths.append(path)
    return paths


def tiny_argv(data_dir: Path, workdir: Path, *extra: str, workers: int = 0) -> list[str]:
    return [
        "--config", "sidd", "--data-dir", str(data_dir), "--workdir", str(workdir),
        "--max-steps", str(STEPS), "--save-every", "3", "--seed", "7",
        "--set", "model.base_ch=8", "data.patches=false", "data.crop=20", f"data.workers={workers}",
        "train.batch_size=4", "train.steps_per_epoch=4", "optim.lr=1e-2", "optim.decay_every_epochs=2",
        "checkpoint.keep=2", "log.every=1", "train.pd_shuffle=true", *extra,
    ]  # fmt: skip


def losses(workdir: Path) -> dict[int, float]:
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    steps = [line["step"] for line in lines if "loss" in line]
    assert len(steps) == len(set(steps)), "a step was logged twice"
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def run_script(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", **(env or {})}
    cmd = [sys.executable, "-c", code]
    return subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)


def _stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat after the command name (state, ppid, ...); None if gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None


def living(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] != "Z"


def living_children(pid: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    return [child for child in pids if (stat := _stat(child)) and int(stat[1]) == pid and stat[0] != "Z"]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    write_images(folder, 6)
    return folder


@pytest.fixture(scope="module")
def uninterrupted(images, tmp_path_factory) -> dict[int, float]:
    """Per-step losses of the tiny run, in this process on one device, never stopped."""
    workdir = tmp_path_factory.mktemp("uninterrupted")
    assert main(tiny_argv(images, workdir)) == 0
    result = losses(workdir)
    assert sorted(result) == list(range(1, STEPS + 1))
    return result


# --- the step -------------------------------------------------------------------------------


def test_train_step_matches_pytorch(reference, flax_model):
    """Loss and gradients of one step equal the reference's L1 on its PD-5 forward."""
    cfg = configlib.resolve("sidd", [(["data", "dir"], "unused")])
    ref = reference(8).train()
    model = flax_model(8)
    graphdef, state = nnx.split(model)
    params = nnx.to_pure_dict(state)
    batch = np.random.default_rng(1).uniform(0, 255, (4, 20, 20, 3)).astype(np.float32)

    x = torch.from_numpy(batch.transpose(0, 3, 1, 2).copy())
    want_loss = torch.nn.functional.l1_loss(ref(x, pd=5), x)
    want_loss.backward()

    schedule = lr_schedule(cfg.optim, 10)
    tx = optimizer(cfg.optim, schedule)
    train_state = TrainState(params, tx.init(params), jnp.zeros((), jnp.int32), jax.random.key(0))
    _, metrics = jax.jit(partial(train_step, graphdef, tx, schedule, cfg.train))(train_state, jnp.asarray(batch))
    grads = jax.jit(jax.grad(l1_loss), static_argnums=(1, 3))(params, graphdef, jnp.asarray(batch), cfg.train)

    assert abs(float(metrics["loss"]) - want_loss.item()) <= 1e-5 * want_loss.item()
    # The reference masks its kernels in place, so autograd leaves gradients at blind taps;
    # the port masks inside the forward, where they are zero. Only the rest can match.
    masks = {key.replace(".mask", ".weight"): m for key, (_, m) in torch_port.mask_buffers(model.config).items()}
    paths = torch_port.key_map(model.config)
    want_sq = 0.0
    for name, p in ref.bsn.named_parameters():
        want = p.grad.numpy()
        if name in masks:
            want = want * masks[name]
        if name.endswith(".weight"):
            want = want.transpose(2, 3, 1, 0)
        got = grads
        for key in paths[name]:
            got = got[key]
        np.testing.assert_allclose(np.asarray(got), want, rtol=0, atol=1e-4 * np.abs(want).max(), err_msg=name)
        want_sq += float(np.sum(want.astype(np.float64) ** 2))
    np.testing.assert_allclose(float(metrics["grad_norm"]), want_sq**0.5, rtol=1e-5)


def test_pd_shuffle_draws_a_sub_image_order_per_step(flax_model):
    """With the release's sub-image shuffle on, step s uses the order drawn from fold_in(key, s)."""
    cfg = configlib.resolve("sidd", [(["data", "dir"], "unused"), (["train", "pd_shuffle"], True)])
    graphdef, state = nnx.split(flax_model(8))
    params = nnx.to_pure_dict(state)
    batch = jnp.asarray(np.random.default_rng(2).uniform(0, 255, (2, 20, 20, 3)).astype(np.float32))
    schedule = lr_schedule(cfg.optim, 10)
    tx = optimizer(cfg.optim, schedule)
    key = jax.random.key(3)
    train_state = TrainState(params, tx.init(params), jnp.asarray(5, jnp.int32), key)
    new_state, _ = jax.jit(partial(train_step, graphdef, tx, schedule, cfg.train))(train_state, batch)
    grad = jax.jit(jax.grad(l1_loss), static_argnums=(1, 3))

    def update(perm: jax.Array | None) -> np.ndarray:
        updates, _ = tx.update(grad(params, graphdef, batch, cfg.train, perm), train_state.opt_state, params)
        return np.concatenate([np.ravel(u) for u in jax.tree.leaves(updates)])

    got = np.concatenate([np.ravel(a - b) for a, b in zip(jax.tree.leaves(new_state.params), jax.tree.leaves(params))])
    want = update(jax.random.permutation(jax.random.fold_in(key, 5), 25))
    unshuffled = update(None)
    scale = np.linalg.norm(want)
    assert np.linalg.norm(got - want) < 1e-3 * scale < np.linalg.norm(unshuffled - want)


def test_lr_schedule_is_the_release_step_decay():
    cfg = configlib.resolve("sidd", [(["data", "dir"], "unused")]).optim
    schedule = lr_schedule(cfg, steps_per_epoch=10)
    lrs = [float(schedule(s)) for s in (0, 79, 80, 159, 160)]
    np.testing.assert_allclose(lrs, [2e-4, 2e-4, 2e-5, 2e-5, 2e-6], rtol=1e-6)
    warm = lr_schedule(dataclasses.replace(cfg, warmup_steps=4), steps_per_epoch=10)
    np.testing.assert_allclose([float(warm(s)) for s in (0, 3, 80)], [5e-5, 2e-4, 2e-5], rtol=1e-6)


# --- configs --------------------------------------------------------------------------------


def test_sidd_configs_hold_the_release_recipe():
    cfg = configlib.resolve("sidd", [(["data", "dir"], "x")])
    assert (cfg.model.base_ch, cfg.data.crop, cfg.train.batch_size, cfg.train.pd, cfg.train.epochs) == (128, 120, 8, 5, 30)
    assert (cfg.data.patch_size, cfg.data.patch_stride, cfg.data.patches) == (512, 384, True)
    assert (cfg.optim.lr, cfg.optim.b1, cfg.optim.b2, cfg.optim.grad_clip) == (2e-4, 0.9, 0.999, None)
    assert (cfg.optim.decay_every_epochs, cfg.optim.decay_rate, cfg.optim.warmup_steps) == (8, 0.1, 0)
    bench = configlib.resolve("sidd_bench", [(["data", "dir"], "x")])
    assert bench.train.batch_size == 16 and bench.name == "sidd_bench"
    assert bench.to_dict() | {"name": "sidd", "train": cfg.to_dict()["train"]} == cfg.to_dict()
    demo = configlib.resolve("demo")
    assert demo.data.dir == "demo" and demo.val.dir == "demo" and demo.data.crop % demo.train.pd == 0


def test_overrides_are_yaml_typed_and_checked():
    cfg = configlib.resolve("sidd", [configlib.parse_override(s) for s in ("data.dir=/d", "optim.lr=1e-3", "optim.grad_clip=2")])
    assert cfg.optim.lr == 1e-3 and cfg.optim.grad_clip == 2.0 and cfg.data.dir == "/d"
    with pytest.raises(UserError, match="unknown config key optim.lrr; valid keys: .*optim.lr"):
        configlib.resolve("sidd", [configlib.parse_override("optim.lrr=1")])
    with pytest.raises(UserError, match="train.batch_size: 'eight' is not int"):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("train.batch_size=eight")])
    with pytest.raises(UserError, match="model.arch 'unet': must be one of ambsn, "):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("model.arch=unet")])
    with pytest.raises(UserError, match="config key train.max_steps: 0 must be positive"):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("train.max_steps=0")])
    with pytest.raises(UserError, match="multiple of train.pd"):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("data.crop=42")])
    with pytest.raises(UserError, match="no config named 'nope'; known configs: .*demo, .*sidd, sidd_bench"):
        configlib.resolve("nope")


@pytest.mark.parametrize(
    "case, message",
    [
        # The data layer words these; what matters is one line naming the folder.
        ("missing", "error: {data}: "),
        ("empty", "error: {data}: "),
        ("bad_key", "error: unknown config key model.width; valid keys: "),
        ("no_data", "error: no training data: pass --data-dir"),
    ],
)
def test_bad_input_is_one_error_line(case, message, tmp_path, capsys):
    data = tmp_path / ("missing" if case == "missing" else "empty")
    if case == "empty":
        data.mkdir()
        (data / "notes.txt").write_text("no images here")
    argv = tiny_argv(data, tmp_path / "run")
    if case == "bad_key":
        argv += ["model.width=3"]
    if case == "no_data":
        argv = ["--config", "sidd", "--workdir", str(tmp_path / "run")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(message.format(data=data)), err


def test_rerun_with_another_config_is_refused(images, tmp_path, capsys):
    workdir = tmp_path / "run"
    configlib.save_resolved(configlib.resolve("sidd", [(["data", "dir"], str(images))]), workdir)
    assert main(tiny_argv(images, workdir)) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {workdir}: holds a run with another config (") and "model.base_ch: 128 -> 8" in err


# --- the input pipeline ---------------------------------------------------------------------


def test_augment_is_a_rotation_or_flip_of_the_crop():
    crop = np.arange(5 * 5 * 3).reshape(5, 5, 3)
    variants = [np.rot90(c, k) for c in (crop, crop[:, ::-1]) for k in range(4)]
    seen = set()
    for seed in range(64):
        out = augment(crop, np.random.default_rng(seed))
        matches = [i for i, v in enumerate(variants) if np.array_equal(out, v)]
        assert len(matches) == 1
        seen.add(matches[0])
    assert seen == set(range(8))


def test_batches_are_deterministic_crops_split_evenly_across_hosts(images):
    paths = sorted(images.glob("*.png"))
    one = training_batches(paths, crop=20, global_batch=4, seed=3)
    first = [one[i] for i in range(4)]
    assert first[0].shape == (4, 20, 20, 3) and first[0].dtype == np.float32
    assert not np.array_equal(first[0], training_batches(paths, crop=20, global_batch=4, seed=4)[0])
    # One epoch (6 images) spans batches 0 and 1: every image once, so no two crops alike.
    sources = np.concatenate(first[:2])[:6].reshape(6, -1)
    assert len({row.tobytes() for row in sources}) == 6
    halves = [training_batches(paths, crop=20, global_batch=4, seed=3, process_index=p, process_count=2) for p in (0, 1)]
    for b in range(4):
        np.testing.assert_array_equal(np.concatenate([halves[0][b], halves[1][b]]), first[b])


def test_crop_larger_than_an_image_is_a_user_error(images):
    batches = training_batches(sorted(images.glob("*.png")), crop=40, global_batch=2, seed=0)
    with pytest.raises(UserError, match=r"44x36 is smaller than the 40x40 training crop"):
        batches[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_restored_iterator_continues_the_exact_sequence(images, tmp_path, workers):
    batches = training_batches(sorted(images.glob("*.png")), crop=20, global_batch=2, seed=5)
    it = batch_iterator(batches, workers)
    for _ in range(3):
        next(it)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.save(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointSave(it)))
        mngr.wait_until_finished()
    want = [next(it) for _ in range(4)]
    it.close()
    fresh = batch_iterator(batches, workers)
    with ocp.CheckpointManager(tmp_path / "ckpt") as mngr:
        mngr.restore(3, args=ocp.args.Composite(data=grain.checkpoint.CheckpointRestore(fresh)))
    got = [next(fresh) for _ in range(4)]
    fresh.close()
    for g, w, index in zip(got, want, range(3, 7)):
        np.testing.assert_array_equal(g, w)
        np.testing.assert_array_equal(g, batches[index])


# --- whole runs -----------------------------------------------------------------------------


def test_four_devices_train_like_one(images, uninterrupted, tmp_path):
    """The same losses with the batch split over 4 (forced host) devices; batch 6 is refused."""
    workdir = tmp_path / "four"
    bad = tiny_argv(images, tmp_path / "bad", "train.batch_size=6")
    code = (
        "import sys, jax\n"
        "from ambsn_jax.train.cli import main\n"
        "assert jax.device_count() == 4\n"
        f"assert main({bad!r}) == 2\n"
        f"sys.exit(main({tiny_argv(images, workdir)!r}))\n"
    )
    proc = run_script(code, {"XLA_FLAGS": "--xla_force_host_platform_device_count=4"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "error: batch size 6 does not divide by the 4 devices" in proc.stderr
    got = losses(workdir)
    assert sorted(got) == sorted(uninterrupted)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [uninterrupted[s] for s in sorted(got)], rtol=1e-5)


def test_two_processes_train_like_one(images, uninterrupted, tmp_path):
    """Two hosts (processes joined by jax.distributed over loopback, one CPU device each) read
    their halves of every batch and train exactly as one process does."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tmp_path / "two"
    base = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu", "JAX_NUM_PROCESSES": "2",
            "JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}"}  # fmt: skip
    logs = [tmp_path / f"process{i}.log" for i in range(2)]
    cmd = [sys.executable, str(ROOT / "train.py"), *tiny_argv(images, workdir)]
    procs = [
        subprocess.Popen(cmd, cwd=ROOT, env={**base, "JAX_PROCESS_ID": str(i)}, stdout=log.open("w"), stderr=subprocess.STDOUT)
        for i, log in enumerate(logs)
    ]
    codes = [proc.wait(timeout=300) for proc in procs]
    assert codes == [0, 0], logs[codes.index(max(codes))].read_text()[-3000:]
    assert "2 devices" in logs[0].read_text()
    got = losses(workdir)
    assert sorted(got) == sorted(uninterrupted)
    np.testing.assert_allclose([got[s] for s in sorted(got)], [uninterrupted[s] for s in sorted(got)], rtol=1e-5)


def test_kill_and_resume_equals_uninterrupted(images, uninterrupted, tmp_path, capsys):
    """SIGKILL mid-run (data read by a worker process), rerun: the same per-step losses."""
    workdir = tmp_path / "killed"
    argv = tiny_argv(images, workdir, workers=1)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu"}
    log = (tmp_path / "killed.log").open("w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *argv], cwd=ROOT, env=env, stdout=log, stderr=log)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        metrics = workdir / METRICS_FILE
        if metrics.is_file() and any(json.loads(line)["step"] >= 7 for line in metrics.read_text().splitlines()):
            workers = living_children(proc.pid)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    assert proc.wait(timeout=60) == -signal.SIGKILL, (tmp_path / "killed.log").read_text()[-3000:]
    assert max(losses(workdir)) < STEPS
    # The data worker notices and ends too, rather than waiting forever to hand over a batch.
    assert workers
    deadline = time.time() + 30
    while any(living(pid) for pid in workers) and time.time() < deadline:
        time.sleep(0.2)
    leftover = [pid for pid in workers if living(pid)]
    for pid in leftover:
        os.kill(pid, signal.SIGKILL)
    assert not leftover

    capsys.readouterr()
    assert main(argv) == 0
    assert "resuming at step " in capsys.readouterr().out
    got = losses(workdir)
    assert sorted(got) == sorted(uninterrupted)
    for step in sorted(got):
        assert abs(got[step] - uninterrupted[step]) <= 1e-5 * abs(uninterrupted[step]), step


def test_sidd_config_on_a_fake_sidd_medium_tree(tmp_path, rng):
    """`--config sidd` cuts patches of the NOISY files only, trains, validates, keeps the best
    checkpoint, and writes eval.json from the checkpoint evaluate.py would load."""
    data = tmp_path / "SIDD_Medium_Srgb" / "Data"
    for scene in ("0001_001_S6_00100_00060_3200_L", "0002_001_IP_00800_00400_5500_N"):
        write_images(data / scene, 2, size=(70, 90), seed=len(scene))
        for i, shot in enumerate(("010", "011")):
            (data / scene / f"img{i:02d}.png").rename(data / scene / f"{scene}_NOISY_SRGB_{shot}.PNG")
            # Not a readable image: training fails if it ever opens ground truth.
            (data / scene / f"{scene}_GT_SRGB_{shot}.PNG").write_bytes(b"ground truth must not be read")
    val = tmp_path / "val"
    val.mkdir()
    clean = rng.integers(0, 256, (1, 2, 24, 24, 3), dtype=np.uint8)
    noisy = np.clip(clean + rng.normal(0, 10, clean.shape), 0, 255).astype(np.uint8)
    save_blocks_mat(val / "ValidationNoisyBlocksSrgb.mat", noisy, "ValidationNoisyBlocksSrgb")
    save_blocks_mat(val / "ValidationGtBlocksSrgb.mat", clean, "ValidationGtBlocksSrgb")
    workdir = tmp_path / "run"
    argv = [
        "--config", "sidd", "--data-dir", str(tmp_path / "SIDD_Medium_Srgb"), "--workdir", str(workdir),
        "--max-steps", "2", "--save-every", "1",
        "--set", "model.base_ch=8", "data.crop=40", "data.patch_size=64", "data.patch_stride=48",
        "data.workers=0", "train.batch_size=4", f"val.dir={val}", "val.batch_size=2", "checkpoint.keep=1",
    ]  # fmt: skip
    assert main(argv) == 0

    patches = sorted((workdir / "patches").rglob("*.png"))
    assert len(patches) == 4 * 4 and all("_NOISY_SRGB_" in p.name for p in patches)
    saved = yaml.safe_load((workdir / "config.yaml").read_text())
    assert saved["data"]["crop"] == 40 and saved["optim"]["lr"] == 2e-4 and saved["train"]["epochs"] == 30
    lines = [json.loads(line) for line in (workdir / METRICS_FILE).read_text().splitlines()]
    val_lines = [line for line in lines if "psnr" in line]
    assert [line["step"] for line in val_lines] == [1, 2] and all(0 <= line["ssim"] < 1 for line in val_lines)
    # Equal PSNRs rank by step, the later first (orbax sorts stably).
    best = max(val_lines, key=lambda line: (line["psnr"], line["step"]))["step"]
    with checkpoint_manager(workdir, keep=1, track_best=True) as mngr:
        assert mngr.all_steps() == sorted({best, 2}) and mngr.best_step() == best
    _, meta = load_model(workdir)
    assert meta["step"] == best and meta["config"]["base_ch"] == 8
    report = json.loads((workdir / EVAL_FILE).read_text())
    assert {"psnr", "ssim", "noisy_psnr", "noisy_ssim", "blocks", "checkpoint"} <= set(report)
    assert len(report["blocks"]) == 2 and report["checkpoint"]["path"] == str(workdir)


def test_checkpoints_keep_the_latest_and_the_best(tmp_path):
    """keep=2: the two latest steps survive, and the best by PSNR beside them, which
    `load_model` (and so evaluate.py) picks from the workdir."""
    model = AMBSN(AMBSNConfig(base_ch=8), rngs=nnx.Rngs(0))
    meta = model_meta(model)
    with checkpoint_manager(tmp_path, keep=2, track_best=True) as mngr:
        for step, psnr in enumerate([20.0, 30.0, 25.0, 21.0, 22.0], start=1):
            items = {PARAMS: ocp.args.StandardSave(params_dict(model)), META: ocp.args.JsonSave({**meta, "tag": step})}
            mngr.save(step, args=ocp.args.Composite(**items), metrics={"psnr": psnr, "ssim": 0.5})
        mngr.wait_until_finished()
        assert mngr.all_steps() == [2, 4, 5] and mngr.best_step() == 2
    _, loaded = load_model(tmp_path)
    assert loaded["step"] == 2 and loaded["tag"] == 2


def test_init_fine_tunes_a_converted_checkpoint(images, official_state_dict, tmp_path, capsys):
    pth = tmp_path / "init.pth"
    torch.save({"epoch": 1, "model_weight": {"denoiser": official_state_dict(8)}}, pth)
    # A vanishing learning rate: Adam leaves the parameters where --init put them.
    assert main(tiny_argv(images, tmp_path / "run", "optim.lr=1e-30", "--max-steps", "2", "--init", str(pth))) == 0
    tuned, _ = load_model(tmp_path / "run")
    start = torch_port.model_from_state_dict({k: v.numpy() for k, v in official_state_dict(8).items()})
    jax.tree.map(partial(np.testing.assert_allclose, rtol=1e-6), params_dict(tuned), params_dict(start))
    capsys.readouterr()  # the first run's progress bar

    assert main(tiny_argv(images, tmp_path / "wide", "model.base_ch=16", "--init", str(pth))) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {pth}: holds ambsn") and "base_ch" in err[0]
