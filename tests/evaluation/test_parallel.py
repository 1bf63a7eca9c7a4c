"""Every evaluation mode gives the same results on 1 device, 4 devices and 2 processes x 2 devices.

Blocks, tiles and files are split over the mesh (SIDD) or over the processes (folders); an item's
R3 randomness depends on its index alone, so only float rounding may differ: at most 0.01% of the
uint8 pixels, by 1. The item counts (3 blocks, 3 images) do not divide by the 4 devices.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ambsn_jax.cli import evaluate
from ambsn_jax.cli.launch import free_port
from ambsn_jax.data.images import read_pixels
from ambsn_jax.evaluation.submission import read_submission
from tests.helpers import ROOT, SIDD_SHAPE, launched_pid, write_png

LIMIT = 3


def argvs(val_dir: Path, bench_dir: Path, images: Path, ckpt: Path, out: Path) -> list[list[str]]:
    """The three modes' command lines, writing under `out`."""
    common = ["--ckpt", str(ckpt), "--batch", "1"]
    return [
        [*common, "--sidd-val", str(val_dir), "--limit", str(LIMIT), "--json", str(out / "val.json")],
        [*common, "--sidd-bench", str(bench_dir), "--submission", str(out / "sub.csv")],
        [*common, "--input", str(images), "--output", str(out / "images"), "--tile", "24", "--overlap", "4"],
    ]


def run_in_subprocesses(all_argv: list[list[str]], processes: int, devices: int, tmp: Path) -> None:
    """Each process runs every command line in turn (as `evaluate.py` would, joined like training)."""
    port = free_port()
    code = "import sys\nfrom ambsn_jax.cli.evaluate import main\n" + "".join(
        f"assert main({argv!r}) == 0\n" for argv in all_argv
    )
    env = {
        **os.environ, "PYTHONPATH": str(ROOT), "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={devices}",
    }  # fmt: skip
    if processes > 1:
        env |= {"JAX_COORDINATOR_ADDRESS": f"127.0.0.1:{port}", "JAX_NUM_PROCESSES": str(processes)}
    logs = [tmp / f"process{i}.log" for i in range(processes)]
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env={**env, "JAX_PROCESS_ID": str(i)},
                         stdout=log.open("w"), stderr=subprocess.STDOUT)  # fmt: skip
        for i, log in enumerate(logs)
    ]
    codes = [proc.wait(timeout=400) for proc in procs]
    assert codes == [0] * processes, logs[int(np.argmax(codes))].read_text()[-3000:]


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    for i, shape in enumerate([(30, 40, 3), (20, 17), (45, 30, 3)]):  # one tiled, one gray and odd
        write_png(folder / f"im{i}.png", shape, seed=i)
    return folder


@pytest.fixture(scope="module")
def one_device(val_dir, bench_dir, images, ckpt, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    for argv in argvs(val_dir, bench_dir, images, ckpt, out):
        assert evaluate.main(argv) == 0
    return out


def assert_same_results(got: Path, want: Path, devices: int, processes: int) -> None:
    a, b = (json.loads((d / "val.json").read_text()) for d in (got, want))
    assert (a["devices"], a["processes"], b["devices"], b["processes"]) == (devices, processes, 1, 1)
    assert [(x["image"], x["block"]) for x in a["blocks"]] == [(x["image"], x["block"]) for x in b["blocks"]]
    assert len(a["blocks"]) == LIMIT
    np.testing.assert_allclose([x["psnr"] for x in a["blocks"]], [x["psnr"] for x in b["blocks"]], atol=1e-4)
    np.testing.assert_allclose([x["ssim"] for x in a["blocks"]], [x["ssim"] for x in b["blocks"]], atol=1e-5)
    pairs = [tuple(read_submission(d / "sub.csv", SIDD_SHAPE) for d in (got, want))]
    pairs += [tuple(read_pixels(d / "images" / p.name) for d in (got, want)) for p in sorted((want / "images").glob("*.png"))]
    assert len(pairs) == 4
    for x, y in pairs:
        diff = np.abs(x.astype(int) - y.astype(int))
        assert diff.max() <= 1 and np.count_nonzero(diff) <= max(1, diff.size // 10_000)


@pytest.mark.slow
def test_four_devices_evaluate_like_one(val_dir, bench_dir, images, ckpt, student_ckpt, one_device, tmp_path):
    """The release's inference of the blind-spot network, and the student's single pass."""
    student = tmp_path / "student"
    for argv in argvs(val_dir, bench_dir, images, student_ckpt, student / "one"):
        assert evaluate.main(argv) == 0
    all_argv = argvs(val_dir, bench_dir, images, ckpt, tmp_path) + argvs(val_dir, bench_dir, images, student_ckpt, student)
    run_in_subprocesses(all_argv, 1, 4, tmp_path)
    assert_same_results(tmp_path, one_device, devices=4, processes=1)
    assert_same_results(student, student / "one", devices=4, processes=1)


@pytest.mark.slow
def test_two_processes_of_two_devices_evaluate_like_one(val_dir, bench_dir, images, ckpt, one_device, tmp_path):
    run_in_subprocesses(argvs(val_dir, bench_dir, images, ckpt, tmp_path), 2, 2, tmp_path)
    assert_same_results(tmp_path, one_device, devices=4, processes=2)
    # Only process 0 wrote the report and the submission; the images were split between them.
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix in (".json", ".csv")) == ["sub.csv", "val.json"]


def launch(processes: int, argv: list[str], log: Path) -> subprocess.Popen:
    """`evaluate.py argv` as `processes` processes x 2 CPU devices (ambsn-launch)."""
    cmd = [sys.executable, "-m", "ambsn_jax.cli.launch", "--processes", str(processes), "--devices-per-process", "2",
           "--", "evaluate.py", *argv, "--peer-timeout", "10"]  # fmt: skip
    with log.open("w") as out:
        return subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, stdout=out, stderr=out)


@pytest.mark.slow
def test_two_processes_killed_mid_folder_resume_to_the_same_bytes(ckpt, tmp_path):
    """kill -9 of process 1 while it denoises its share: process 0 leaves (75), the rerun over 2
    processes reuses what either finished (their manifests) and writes the bytes of one process."""
    images = tmp_path / "in"
    for i in range(8):
        write_png(images / f"im{i}.png", (30, 40, 3), seed=i)
    common = ["--ckpt", str(ckpt), "--batch", "1", "--input", str(images), "--tile", "24", "--overlap", "4"]
    one = launch(1, [*common, "--output", str(tmp_path / "one")], tmp_path / "one.log")
    out = tmp_path / "two"
    proc = launch(2, [*common, "--output", str(out)], tmp_path / "killed.log")
    manifest = out / ".ambsn-evaluate.1.jsonl"
    deadline = time.monotonic() + 300
    # The header and one finished image: process 1 is mid-way through its share of four.
    while not (manifest.is_file() and len(manifest.read_text().splitlines()) >= 2):
        assert proc.poll() is None and time.monotonic() < deadline, (tmp_path / "killed.log").read_text()[-3000:]
        time.sleep(0.02)
    os.kill(launched_pid(proc.pid, 1), signal.SIGKILL)
    killed_log = tmp_path / "killed.log"
    assert proc.wait(timeout=120) == 128 + signal.SIGKILL, killed_log.read_text()[-3000:]
    assert "ambsn-launch: process 0 exited with status 75" in killed_log.read_text()
    done = len(list(out.glob("*.png")))
    assert 1 <= done < 8
    rerun = launch(2, [*common, "--output", str(out)], tmp_path / "rerun.log")
    assert rerun.wait(timeout=300) == 0 and one.wait(timeout=300) == 0, (tmp_path / "rerun.log").read_text()[-3000:]
    assert f"[0] wrote 8 of 8 images to {out} ({done} reused from an earlier run" in (tmp_path / "rerun.log").read_text()
    names = sorted(p.name for p in (tmp_path / "one").glob("*.png"))
    assert names == sorted(p.name for p in out.glob("*.png")) and len(names) == 8
    for name in names:
        assert (out / name).read_bytes() == (tmp_path / "one" / name).read_bytes(), name

