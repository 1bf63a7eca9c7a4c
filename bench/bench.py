"""JAX vs the PyTorch reference of the release, side by side on this machine, for every network
of the family (AM-BSN, AP-BSN, MM-BSN, TM-BSN and its student NBSN; the last two's side is their
release's own code where AMBSN_TMBSN_RELEASE names a checkout, else their twins:
bench/tmbsn_torch.py, which says what their cases run).

    python bench/bench.py [--arch ambsn apbsn mmbsn] [--only CASE ...] [--repeats N] [--json PATH]

Each (case, architecture, framework) runs in its own subprocess, so that its peak memory (max
RSS) is its own and a failure costs only its row. Times are medians over `--repeats` runs after
a first call; a JAX first call is its compile (plus one run). A case's FLOPs are the release's:
PyTorch's `FlopCounterMode` counts them in the reference's first call (AM-BSN: 7.76 MFLOP per
bsn-input pixel; a training step counts forward and backward), and both frameworks' GFLOP/s
divide that same count by their own time. Case `onnx256` is the bsn forward at 256 x 256 in
onnxruntime (CPU) against JAX: its "torch" column is onnxruntime running the graph that
`convert/to_onnx.py` writes, with the JAX model's random weights.

Case `user_path` is the shipped demo teacher and student end to end, JAX alone: a 256 x 256 block
through the network, the API and `evaluate.py --input`, and a photo larger than a tile (the
student's 4000 x 3000) against its pixel share of the block's time (`_user_path`).

`--winograd` runs forward256, denoise256 and train_step in JAX a second time with Winograd's
convolutions (`ops.winograd`) and prints them against the direct ones and PyTorch: times (wall
and CPU seconds), the effective rate (the release's FLOPs / time) as a share of the same run's
matmul rate, and the share of XLA's FLOP count avoided. `--train-batch N` shrinks the train
step's batch (the release's: 8) where a loaded CPU cannot afford it.

`--smoke` runs every case once at a tiny size (networks of C = 8, blocks of a few dozen
pixels): its numbers mean nothing, it checks that the cases run (tests/bench/test_bench.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ambsn_jax.nets import registry

ROOT = Path(__file__).resolve().parents[1]

# The releases' networks: this project's student has no release to compare with (bench/student.py
# times it); TM-BSN's student NBSN has (bench/tmbsn_torch.py, as TM-BSN's).
TMBSN_RELEASE = ("tmbsn", "nbsn")
ARCHS = [a.name for a in registry.ARCHITECTURES.values() if a.blind_spot or a.name in TMBSN_RELEASE]
CASES = ["matmul", "forward256", "forward264", "denoise256", "train_step", "onnx256", "eval_throughput", "user_path"]
# eval_throughput: default inference of blocks split over 1, 2, 4 devices (on a CPU, forced host
# devices that share the same cores: the numbers then show overhead, not speed-up).
EVAL_DEVICES = (1, 2, 4)
EVAL_BLOCKS_PER_DEVICE = 2


@dataclasses.dataclass(frozen=True)
class Sizes:
    """What the cases run at."""

    smoke: bool  # networks narrow (`_network`)
    matmul: int
    side_divisor: int  # the block side a case names (256, 264) is divided by it
    train_batch: int
    train_crop: int
    eval_side_cpu: int  # eval_throughput's block side on a CPU
    photo: tuple[int, int, int]  # user_path: the student's photo (H, W), the teacher's square side
    user_models: tuple[str, ...]  # user_path: which shipped demo models (`_user_path`)


# The release's: train step of batch 8 of 120 x 120 crops, PD 5; a CPU takes ~1 s for a 64 block at C = 128.
FULL = Sizes(smoke=False, matmul=4096, side_divisor=1, train_batch=8, train_crop=120, eval_side_cpu=64, photo=(3000, 4000, 1024),
             user_models=("teacher", "student"))
SMOKE = Sizes(smoke=True, matmul=64, side_divisor=8, train_batch=2, train_crop=40, eval_side_cpu=16, photo=(90, 120, 100),
              user_models=("student",))
SIZES = FULL  # main() sets SMOKE for --smoke, in this process and in its children
WINOGRAD = False  # `measure` sets it for framework "jax-winograd": the 3x3 convs by `ops.winograd`
WINOGRAD_CASES = ("forward256", "denoise256", "train_step")  # what `--winograd` runs both ways
# `--winograd` also has their JAX children count XLA's FLOPs (a second compile, so only then).
COUNT_FLOPS = "AMBSN_BENCH_XLA_FLOPS"


def _timed(fn: Callable[[], object], repeats: int, first_call=None) -> dict:
    """`first_call`, if given, runs in place of the first plain call (the torch FLOP count).
    Wall seconds, and the process's CPU seconds (all threads): on a CPU that other jobs load,
    the work a run did, where wall time also counts the others' share."""
    t0 = time.perf_counter()
    (first_call or fn)()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats):
        t0, c0 = time.perf_counter(), time.process_time()
        fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"first_call_s": first, "median_s": statistics.median(times), "runs_s": times, "median_cpu_s": statistics.median(cpu)}


def _network(arch: str) -> dict:
    """The config every case builds `arch` with: the release's; for --smoke C = 8 (the depth
    stays the release's: the PyTorch reference exists only at that depth)."""
    return {"base_ch": 8} if SIZES.smoke else {}


def _train_crop(arch: str) -> int:
    """The training crop's side: NBSN's release pools 2**depth without padding, so its crops
    divide by that (its recipe's 128 x 128)."""
    multiple = 2 ** getattr(registry.network_config(arch, _network(arch)), "depth", 0)
    return -(-SIZES.train_crop // multiple) * multiple


def _side(case: str) -> int:
    return (int(case[len("forward") :]) if case.startswith("forward") else 256) // SIZES.side_divisor


def _is_forward(case: str) -> bool:
    return case.startswith("forward") or case == "onnx256"


def run_jax(case: str, arch: str, repeats: int) -> dict:
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from ambsn_jax.checkpoint.meta import CheckpointMeta
    from ambsn_jax.checkpoint.store import params_of
    from ambsn_jax.inference.denoiser import BatchDenoiser
    from ambsn_jax.inference.release import default_inference

    if case == "matmul":
        a = jnp.asarray(np.random.rand(SIZES.matmul, SIZES.matmul), jnp.float32)
        f = jax.jit(lambda a: a @ a)
        return _timed(lambda: f(a).block_until_ready(), repeats)
    if case == "train_step":
        run = _jax_train_step(arch)
        return _timed(run, repeats) | ({"xla_flops": run.xla_flops()} if os.environ.get(COUNT_FLOPS) else {})
    if case == "user_path":
        return _user_path(arch, repeats)
    model = registry.build(arch, _network(arch))
    if case == "eval_throughput":
        return _eval_throughput(arch, model, repeats)
    side = _side(case)
    x = jnp.asarray(np.random.RandomState(0).uniform(0, 255, (1, side, side, 3)), jnp.float32)
    if _is_forward(case):
        from ambsn_jax.ops.conv import winograd

        graphdef, state = nnx.split(model)

        def forward(s, x):
            with winograd(WINOGRAD):  # read while tracing
                return nnx.merge(graphdef, s)(x)

        f = jax.jit(forward)
        r = _timed(lambda: f(state, x).block_until_ready(), repeats)
        return r | ({"xla_flops": _xla_flops(f.lower(state, x).compile())} if os.environ.get(COUNT_FLOPS) else {})
    meta = CheckpointMeta.for_release(arch, model.config, source="random init")
    cfg = default_inference(meta, winograd=WINOGRAD)
    den = BatchDenoiser(arch, model.config, cfg).bind(params_of(model))
    keys = jax.random.split(jax.random.key(0), 1)
    # The default inference returns NumPy: the call has finished when it returns.
    r = _timed(lambda: den(x, keys), repeats)
    return r | ({"xla_flops": _denoise_xla_flops(arch, model, cfg, side)} if os.environ.get(COUNT_FLOPS) else {})


def _xla_flops(compiled) -> float:
    cost = compiled.cost_analysis()
    return float((cost[0] if isinstance(cost, list) else cost)["flops"])


def _denoise_xla_flops(arch: str, model, cfg, side: int) -> float:
    """XLA's FLOP count of the default inference of one block: R3's passes as one batch, which
    computes the same (XLA counts a loop's body once)."""
    from ambsn_jax.checkpoint.store import params_of
    from ambsn_jax.inference.denoiser import BatchDenoiser

    den = BatchDenoiser(arch, model.config, dataclasses.replace(cfg, r3_batched=True))
    return _xla_flops(den.program.lower(*den.abstract_args(params_of(model), 1, side, side)).compile())


def _eval_throughput(arch: str, model, repeats: int) -> dict:
    """Blocks per second of the release's default inference over every device this process sees."""
    import jax

    from ambsn_jax.checkpoint.meta import CheckpointMeta
    from ambsn_jax.checkpoint.store import params_of
    from ambsn_jax.inference.denoiser import BatchDenoiser
    from ambsn_jax.inference.release import default_inference

    meta = CheckpointMeta.for_release(arch, model.config, source="random init")
    den = BatchDenoiser(arch, model.config, default_inference(meta)).bind(params_of(model))
    side = SIZES.eval_side_cpu if jax.default_backend() == "cpu" else _side("denoise256")
    n = EVAL_BLOCKS_PER_DEVICE * den.devices
    x = np.random.RandomState(0).uniform(0, 255, (n, side, side, 3)).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), n)
    r = _timed(lambda: den(x, keys), repeats)
    return {**r, "devices": den.devices, "blocks": n, "side": side, "blocks_per_s": n / r["median_s"]}


def _user_path(model: str, repeats: int) -> dict:
    """The demo `model` ("teacher" or "student") as a user meets it, against its network alone
    (`BoundDenoiser` on a float block, as bench/student.py times it): a 256^2 block through the
    API (`ambsn_jax.load` once, then calls) and through `evaluate.py --input` (the marginal cost
    of an image in a folder), and a photo larger than a tile through the API, against its pixel
    share of the block's time. The student's photo is 4000 x 3000; the teacher's 1024^2 (a
    12-megapixel photo takes it minutes on a CPU)."""
    import tempfile

    import jax

    import ambsn_jax
    from ambsn_jax.checkpoint.store import DEMO_CHECKPOINT, DEMO_STUDENT
    from ambsn_jax.inference.denoiser import BatchDenoiser
    from ambsn_jax.inference.keys import item_keys
    from ambsn_jax.ops.windows import Tiling

    ckpt = str(DEMO_STUDENT if model == "student" else DEMO_CHECKPOINT)
    tiling = Tiling(tile=48, overlap=8) if SIZES.smoke else Tiling()
    side = _side("denoise256")
    photo_hw = (SIZES.photo[0], SIZES.photo[1]) if model == "student" else (SIZES.photo[2],) * 2
    api = ambsn_jax.load(ckpt, tiling=tiling)
    rng = np.random.RandomState(0)
    block = rng.randint(0, 256, (side, side, 3), np.uint8)
    checkpoint = api.checkpoint
    network = BatchDenoiser(checkpoint.meta.arch, checkpoint.meta.config, api.cfg).bind(checkpoint.params)
    x, keys = block[None].astype(np.float32), item_keys(0, [0])
    net = _timed(lambda: network(x, keys), repeats)
    via_api = _timed(lambda: api(block), repeats)
    photo = rng.randint(0, 256, (*photo_hw, 3), np.uint8)
    big = _timed(lambda: api(photo), 1)
    with tempfile.TemporaryDirectory() as tmp:
        cli = _cli_per_image(ckpt, block, tiling, Path(tmp), repeats)
    pixels = photo.shape[0] * photo.shape[1] / side**2
    return {
        "model": model, "side": side, "network_s": net["median_s"], "api_s": via_api["median_s"], "cli_s": cli[0],
        "photo": list(photo_hw), "photo_s": big["median_s"], "photo_first_s": big["first_call_s"],
        "photo_share_s": pixels * net["median_s"], "api_ratio": via_api["median_s"] / net["median_s"],
        "cli_ratio": cli[0] / net["median_s"], "photo_ratio": big["median_s"] / (pixels * net["median_s"]),
        "cpu_s": {"network": net["median_cpu_s"], "api": via_api["median_cpu_s"], "cli": cli[1], "photo": big["median_cpu_s"]},
        "cpu_ratios": {"api": via_api["median_cpu_s"] / net["median_cpu_s"], "cli": cli[1] / net["median_cpu_s"],
                       "photo": big["median_cpu_s"] / (pixels * net["median_cpu_s"])},
        "devices": jax.device_count(), "load_average": os.getloadavg(),
    }  # fmt: skip


def _cli_per_image(ckpt: str, block: np.ndarray, tiling, tmp: Path, extra: int) -> tuple[float, float]:
    """Wall and CPU seconds one more image adds to an `evaluate.py --input FOLDER` run: a folder
    of 1 + `extra` copies of `block` against a folder of 1, after a run that fills the
    compilation cache."""
    import cv2

    from ambsn_jax.cli.evaluate import main as evaluate

    def run(count: int) -> np.ndarray:
        folder = tmp / f"in{count}"
        folder.mkdir(exist_ok=True)
        for i in range(count):
            cv2.imwrite(str(folder / f"{i:03d}.png"), block)
        args = ["--ckpt", ckpt, "--input", str(folder), "--output", str(tmp / f"out{count}"), "--overwrite"]
        t0, c0 = time.perf_counter(), time.process_time()
        evaluate([*args, "--tile", str(tiling.tile), "--overlap", str(tiling.overlap)])
        return np.array([time.perf_counter() - t0, time.process_time() - c0])

    run(1)
    wall, cpu = (run(1 + extra) - run(1)) / extra
    return float(wall), float(cpu)


def _jax_train_step(arch: str) -> Callable[[], None]:
    """One call = one Adam step of the architecture's release recipe on a fixed batch."""
    from functools import partial

    import jax
    import jax.numpy as jnp

    from ambsn_jax.train import config as configlib
    from ambsn_jax.train.step import Recipe, init_state, lr_schedule, optimizer, train_step

    # a recipe wants a data folder, a student's a teacher
    overrides = [(["data", "dir"], "demo"), (["train", "winograd"], WINOGRAD)]
    overrides += [] if registry.get(arch).blind_spot else [(["distill", "teacher"], "bench")]
    cfg = configlib.resolve(registry.get(arch).release_config, overrides)
    schedule = lr_schedule(cfg.optim, steps_per_epoch=1000)
    tx = optimizer(cfg.optim, schedule)

    def new_model():
        return registry.build(arch, _network(arch))

    graphdef = registry.graphdef(arch, _network(arch))
    recipe = Recipe.of(cfg)
    state = [jax.jit(partial(init_state, new_model, tx, 0, recipe))()]
    step = jax.jit(partial(train_step, graphdef, tx, schedule, recipe), donate_argnums=0)
    # A student's batch holds its teacher's targets beside the noisy crops (`Recipe.batch_channels`).
    shape = (SIZES.train_batch, _train_crop(arch), _train_crop(arch), recipe.batch_channels)
    batch = np.random.RandomState(0).uniform(0, 255, shape)
    batch = jnp.asarray(batch, jnp.float32)

    def run():
        state[0], metrics = step(state[0], batch)
        metrics["loss"].block_until_ready()

    run.xla_flops = lambda: _xla_flops(step.lower(state[0], batch).compile())
    return run


def run_torch(case: str, arch: str, repeats: int) -> dict:
    import torch

    from ambsn_jax.convert.reference import ReleaseDenoiser, twin_of

    # Tiny cases gain nothing from threads, and on a loaded CPU idle ones cost seconds.
    torch.set_num_threads(1 if SIZES.smoke else os.cpu_count() or 1)
    # On a GPU machine, the release on the same GPU, with PyTorch's defaults (TF32 convolutions).
    device = "cuda" if torch.cuda.is_available() else "cpu"
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    if case == "matmul":
        a = torch.rand(SIZES.matmul, SIZES.matmul, device=device)
        return _timed(lambda: (a @ a, sync()), repeats)
    torch.manual_seed(0)
    if case == "onnx256":
        return _onnxruntime_forward(arch, repeats)
    record = registry.get(arch)
    if arch in TMBSN_RELEASE:  # its release's code, on 0..1 (bench/tmbsn_torch.py)
        from tmbsn_torch import case_fn

        fn, code = case_fn(case, _side(case), SIZES.train_batch, _train_crop(arch), device, sync, arch)
        return _counted(fn, repeats) | {"code": code}
    net = ReleaseDenoiser(bsn=twin_of(record.config(**_network(arch))), tta=record.release_tta).to(device)
    if case == "train_step":
        opt = torch.optim.Adam(net.parameters(), lr=1e-4)
        x = torch.rand(SIZES.train_batch, 3, SIZES.train_crop, SIZES.train_crop, device=device) * 255

        def fn():
            opt.zero_grad()
            loss = torch.nn.functional.l1_loss(net(x, 5), x)
            loss.backward()
            opt.step()
            sync()

    else:
        side = _side(case)
        x = torch.rand(1, 3, side, side, device=device) * 255
        forward = net.bsn if case.startswith("forward") else net.denoise

        @torch.no_grad()
        def fn():
            forward(x)
            sync()

    return _counted(fn, repeats)


def _counted(fn: Callable[[], None], repeats: int) -> dict:
    """`_timed`, its first call counting the FLOPs (and the GPU's peak memory where one ran)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)

    def counted():
        with counter:
            fn()

    r = _timed(fn, repeats, first_call=counted)
    r["flops"] = counter.get_total_flops()
    if torch.cuda.is_available():
        r["device_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return r


def _onnxruntime_forward(arch: str, repeats: int) -> dict:
    """The bsn graph of a random-init JAX model in onnxruntime; FLOPs counted on the reference."""
    import tempfile

    import onnxruntime as ort
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from ambsn_jax.convert import onnx_export

    model = registry.build(arch, _network(arch))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bsn.onnx"
        bsn = _onnx_network(arch, model)
        onnx_export.export_graph(bsn, path)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    side = _side("onnx256")
    x = np.random.RandomState(0).uniform(0, 255, (1, 3, side, side)).astype(np.float32)
    r = _timed(lambda: session.run(None, {"x": x}), repeats)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        bsn(torch.from_numpy(x))
    r["flops"] = counter.get_total_flops()
    return r


def _onnx_network(arch: str, model) -> "torch.nn.Module":
    """The network graph `convert/to_onnx.py` writes for `model`: TM-BSN's at its default hole size."""
    from ambsn_jax.checkpoint.meta import CheckpointMeta
    from ambsn_jax.checkpoint.store import params_of
    from ambsn_jax.convert import onnx_export

    cfg = onnx_export.pd_inference(CheckpointMeta.for_release(arch, model.config, source="random init"))
    if cfg.hole is not None:
        return onnx_export.hole_modules(params_of(model), model.config, cfg)[0]
    return onnx_export.reference_for_export(params_of(model), model.config).bsn


def _jax_device_peak_mib() -> float | None:
    import jax

    stats = jax.devices()[0].memory_stats() or {}
    return stats["peak_bytes_in_use"] / 2**20 if "peak_bytes_in_use" in stats else None


def measure(case: str, arch: str, framework: str, repeats: int) -> dict:
    """What a child process reports (peak memory: the whole process's, so one case per process)."""
    global WINOGRAD
    WINOGRAD = framework == "jax-winograd"
    r = (run_jax if framework.startswith("jax") else run_torch)(case, arch, repeats)
    r["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if framework.startswith("jax") and (peak := _jax_device_peak_mib()) is not None:
        r["device_peak_mib"] = peak
    return r


def _run_child(case: str, arch: str, framework: str, repeats: int, devices: int | None = None) -> dict:
    cmd = [sys.executable, __file__, "--child", case, arch, framework, "--repeats", str(repeats)]
    cmd += ["--smoke"] if SIZES.smoke else []
    cmd += ["--train-batch", str(SIZES.train_batch)]
    env = dict(os.environ)
    if devices is not None:
        # Affects the host (CPU) platform only: a GPU machine runs on its own devices.
        env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode != 0:
        lines = (out.stderr or out.stdout).strip().splitlines() or [f"exit status {out.returncode}"]
        return {"error": lines[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _report_user_path(model: str, repeats: int) -> dict:
    r = _run_child("user_path", model, "jax", repeats)
    if "error" in r:
        print(f"{model}/user_path FAILED: {r['error']}", flush=True)
        return r
    print(f"{model}/user_path {r['side']}^2 block: network {r['network_s']:.3f} s, API {r['api_s']:.3f} s "
          f"({r['api_ratio']:.2f}x), evaluate.py --input {r['cli_s']:.3f} s ({r['cli_ratio']:.2f}x); "
          f"{r['photo'][1]}x{r['photo'][0]} photo {r['photo_s']:.1f} s = {r['photo_ratio']:.2f}x its pixel share "
          f"({r['photo_share_s']:.1f} s; first call {r['photo_first_s']:.1f} s); in CPU seconds: API "
          f"{r['cpu_ratios']['api']:.2f}x, evaluate.py {r['cpu_ratios']['cli']:.2f}x, photo {r['cpu_ratios']['photo']:.2f}x "
          f"(load {r['load_average'][0]:.1f})", flush=True)  # fmt: skip
    return r


def _table(results: dict, archs: list[str], cases: list[str]) -> list[dict]:
    ceiling = results.get("matmul/jax", {}).get("gflops")
    rows = []
    for arch in archs:
        for case in cases:
            j, t = results.get(f"{arch}/{case}/jax", {}), results.get(f"{arch}/{case}/torch", {})
            if case == "matmul" or "median_s" not in j or "median_s" not in t:
                continue
            rows.append({
                "arch": arch, "case": case, "jax_s": j["median_s"], "torch_s": t["median_s"],
                "speedup": t["median_s"] / j["median_s"], "jax_gflops": j["gflops"],
                "torch_gflops": t["gflops"], "ceiling_share": j["gflops"] / ceiling if ceiling else None,
                "jax_compile_s": j["first_call_s"] - j["median_s"],
                "jax_peak_mib": j["peak_rss_mib"], "torch_peak_mib": t["peak_rss_mib"],
            })  # fmt: skip
    return rows


def _cpu_rate(r: dict, torch_row: dict | None) -> float:
    """FLOPs per CPU second (all threads): the release's count (the torch row's), or the matmul's."""
    flops = torch_row["flops"] if torch_row is not None else 2 * SIZES.matmul**3
    return flops / r["median_cpu_s"]


def _winograd_table(results: dict, archs: list[str]) -> list[dict]:
    """JAX with Winograd's convs on against off and against PyTorch, per network and case: the
    effective rate (the release's FLOPs / time) as a share of the same run's matmul rate, and
    the share of XLA's FLOP count that Winograd avoids."""
    ceiling = results.get("matmul/jax", {}).get("gflops")
    rows = []
    for arch in archs:
        for case in WINOGRAD_CASES:
            off, on, t = (results.get(f"{arch}/{case}/{fw}", {}) for fw in ("jax", "jax-winograd", "torch"))
            if not all("median_s" in r for r in (off, on, t)):
                continue
            rows.append({
                "arch": arch, "case": case, "off_s": off["median_s"], "on_s": on["median_s"], "torch_s": t["median_s"],
                "on_vs_off": off["median_s"] / on["median_s"], "on_vs_torch": t["median_s"] / on["median_s"],
                "cpu_on_vs_off": off["median_cpu_s"] / on["median_cpu_s"], "cpu_on_vs_torch": t["median_cpu_s"] / on["median_cpu_s"],
                "on_rate_share": on["gflops"] / ceiling if ceiling else None,
                "cpu_on_rate_share": _cpu_rate(on, t) / _cpu_rate(results["matmul/jax"], None) if ceiling else None,
                "off_rate_share": off["gflops"] / ceiling if ceiling else None,
                "flops_avoided": 1 - on["xla_flops"] / off["xla_flops"],
                "peak_mib": {"off": off["peak_rss_mib"], "on": on["peak_rss_mib"], "torch": t["peak_rss_mib"]},
            })  # fmt: skip
    print(f"\n{'arch':6s} {'case':11s} {'off s':>8s} {'on s':>8s} {'torch s':>8s} {'on/off':>7s} {'on/torch':>8s} "
          f"{'rate on':>8s} {'rate off':>8s} {'FLOPs avoided':>13s} {'peak MiB off/on/torch':>22s}")  # fmt: skip
    for r in rows:
        share = [f"{100 * r[k]:.0f}%" if r[k] else "-" for k in ("on_rate_share", "off_rate_share")]
        peak = "/".join(f"{r['peak_mib'][k]:.0f}" for k in ("off", "on", "torch"))
        print(f"{r['arch']:6s} {r['case']:11s} {r['off_s']:8.3f} {r['on_s']:8.3f} {r['torch_s']:8.3f} "
              f"{r['on_vs_off']:6.2f}x {r['on_vs_torch']:7.2f}x {share[0]:>8s} {share[1]:>8s} "
              f"{100 * r['flops_avoided']:12.0f}% {peak:>22s}")  # fmt: skip
    return rows


def _runs(args: argparse.Namespace) -> list[tuple[str, str]]:
    """(case, architecture) in order: the matmul, each architecture's cases, the demo models' user path."""
    runs = [(case, "-") for case in args.only if case == "matmul"]
    runs += [(case, arch) for arch in args.arch for case in args.only if case not in ("matmul", "user_path")]
    return runs + [("user_path", m) for m in SIZES.user_models if "user_path" in args.only]


def _sizes(args: argparse.Namespace) -> Sizes:
    """What the options make the cases run at (and `--winograd`'s FLOP counts switched on)."""
    if args.winograd:
        os.environ[COUNT_FLOPS] = "1"  # read by the children (and by `measure` in this process)
    sizes = SMOKE if args.smoke else FULL
    return sizes if args.train_batch is None else dataclasses.replace(sizes, train_batch=args.train_batch)


def main(argv: list[str] | None = None) -> int:
    global SIZES
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", nargs="+", choices=ARCHS, default=ARCHS)
    ap.add_argument("--only", nargs="+", choices=CASES, default=CASES)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--json", type=Path, help="where the results go (default bench/results.json; --smoke: none)")
    ap.add_argument("--smoke", action="store_true", help="every case once at a tiny size: checks that they run")
    ap.add_argument("--train-batch", type=int, help="train_step's batch (default the release's 8; smoke 2)")
    ap.add_argument("--winograd", action="store_true", help=f"{', '.join(WINOGRAD_CASES)} in JAX with Winograd's convs too")
    ap.add_argument("--child", nargs=3, metavar=("CASE", "ARCH", "FRAMEWORK"), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    SIZES = _sizes(args)
    if args.child:
        print(json.dumps(measure(*args.child, args.repeats)))
        return 0
    results = {}
    for case, arch in _runs(args):
        if case == "user_path":
            results[f"{arch}/{case}/jax"] = _report_user_path(arch, args.repeats)
            continue
        if case == "eval_throughput":
            for d in EVAL_DEVICES:
                r = results[f"{arch}/{case}/jax{d}"] = _run_child(case, arch, "jax", args.repeats, devices=d)
                if "error" in r:
                    print(f"{arch}/{case} {d} devices FAILED: {r['error']}", flush=True)
                    continue
                print(f"{arch}/{case} {r['devices']} devices: {r['blocks']} blocks of {r['side']}^2 in "
                      f"{r['median_s']:.2f} s, {r['blocks_per_s']:.2f} blocks/s", flush=True)  # fmt: skip
            continue
        name = "matmul" if case == "matmul" else f"{arch}/{case}"
        # torch first: its first call counts the case's FLOPs, which the JAX row divides too.
        for fw in ["torch", "jax"] + (["jax-winograd"] if args.winograd and case in WINOGRAD_CASES else []):
            r = results[f"{name}/{fw}"] = _run_child(case, arch, fw, args.repeats)
            if "error" in r:
                print(f"{name:22s} {fw:6s} FAILED: {r['error']}", flush=True)
                continue
            flops = 2 * SIZES.matmul**3 if case == "matmul" else results[f"{name}/torch"].get("flops")
            r["gflops"] = flops / r["median_s"] / 1e9 if flops else float("nan")
            print(f"{name:22s} {fw:6s} median {r['median_s']:8.3f} s  first {r['first_call_s']:8.2f} s  "
                  f"{r['gflops']:7.1f} GFLOP/s  peak {r['peak_rss_mib']:7.0f} MiB", flush=True)  # fmt: skip
    table = _table(results, args.arch, args.only)
    print(f"\n{'arch':6s} {'case':11s} {'jax s':>9s} {'torch s':>9s} {'speedup':>8s} {'GFLOP/s':>8s} "
          f"{'of matmul':>9s} {'compile s':>9s}")  # fmt: skip
    for r in table:
        share = f"{100 * r['ceiling_share']:.0f}%" if r["ceiling_share"] else "-"
        print(f"{r['arch']:6s} {r['case']:11s} {r['jax_s']:9.3f} {r['torch_s']:9.3f} {r['speedup']:7.2f}x "
              f"{r['jax_gflops']:8.1f} {share:>9s} {r['jax_compile_s']:9.1f}")  # fmt: skip
    winograd = _winograd_table(results, args.arch) if args.winograd else []
    machine = {"platform": platform.platform(), "processor": platform.processor(), "cpus": os.cpu_count(),
               "load_average_end": os.getloadavg()}  # fmt: skip
    path = args.json or (None if args.smoke else ROOT / "bench" / "results.json")
    if path is not None:
        path.write_text(json.dumps({"machine": machine, "results": results, "table": table, "winograd": winograd}, indent=1))
        print(f"\nwrote {path}")
    failed = [k for k, r in results.items() if "error" in r]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
