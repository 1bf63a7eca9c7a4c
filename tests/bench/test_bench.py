"""bench/bench.py at `--smoke` size: every case of the benchmark runs, so that none breaks unseen.

The cases run in this process (`measure` in place of a child process each: one JAX import
instead of a dozen); one real child checks the subprocess protocol and the forced devices.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_script(name: str):
    """bench/<name>.py as a fresh module (bench/ is scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"bench_script_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def bench():
    module = load_script("bench")
    yield module
    sys.modules.pop(module.__name__, None)


def test_every_case_runs_at_smoke_size(bench, monkeypatch, tmp_path):
    def in_process(case, arch, framework, repeats, devices=None):
        return bench.measure(case, arch, framework, repeats)

    monkeypatch.setattr(bench, "_run_child", in_process)
    out = tmp_path / "results.json"
    assert bench.main(["--smoke", "--arch", "ambsn", "--repeats", "1", "--json", str(out)]) == 0
    results = json.loads(out.read_text())
    assert not [k for k, r in results["results"].items() if "error" in r]
    timed = set(bench.CASES) - {"matmul", "eval_throughput", "user_path"}  # the table's rows: JAX against another framework
    assert {row["case"] for row in results["table"]} == timed
    assert all(row["jax_s"] > 0 and row["torch_s"] > 0 for row in results["table"])
    assert {results["results"][f"ambsn/eval_throughput/jax{d}"]["blocks"] for d in bench.EVAL_DEVICES} == {2}
    for model in bench.SMOKE.user_models:  # the photo is larger than the smoke tile: it goes through the tiling
        r = results["results"][f"{model}/user_path/jax"]
        assert min(r["network_s"], r["api_s"], r["photo_s"]) > 0 and max(r["photo"]) > 48, r


def test_the_winograd_table_compares_on_off_and_torch(bench):
    # The Winograd children are the plain JAX ones with a switch (compiling them costs a minute
    # even at smoke size); the table they feed is checked on made-up results.
    results = {"matmul/jax": {"gflops": 100.0, "median_cpu_s": 2 * bench.SIZES.matmul**3 / 100.0}}
    for case in bench.WINOGRAD_CASES:
        for fw, s, flops in [("jax", 2.0, 10.0), ("jax-winograd", 1.0, 6.0), ("torch", 4.0, None)]:
            results[f"ambsn/{case}/{fw}"] = {"median_s": s, "median_cpu_s": s, "gflops": 50.0 / s, "xla_flops": flops, "peak_rss_mib": s, "flops": 50.0}
    rows = bench._winograd_table(results, ["ambsn", "apbsn"])
    assert [r["case"] for r in rows] == list(bench.WINOGRAD_CASES)  # apbsn has no results: no rows
    shares = {(r["on_vs_off"], r["on_vs_torch"], r["flops_avoided"], r["on_rate_share"], r["cpu_on_rate_share"]) for r in rows}
    assert shares == {(2.0, 4.0, 0.4, 0.5, 0.5)}


def test_a_child_process_runs_on_forced_devices(bench):
    bench.SIZES = bench.SMOKE
    r = bench._run_child("eval_throughput", "ambsn", "jax", 1, devices=2)
    assert r.get("devices") == 2, r
    assert r["blocks"] == 2 * bench.EVAL_BLOCKS_PER_DEVICE


def test_the_tmbsn_release_rows_run_at_smoke_size(bench, monkeypatch):
    """The torch side of TM-BSN's and NBSN's rows (the release's code or its twins,
    bench/tmbsn_torch.py): the forward, NBSN's at a side its release cannot take (264 / 8 = 33),
    and NBSN's distillation step on the Recharger's targets, at its release's crop multiple.
    Their JAX side is every network's (the test above)."""
    monkeypatch.syspath_prepend(str(BENCH))  # bench.py imports tmbsn_torch as a script's neighbour
    bench.SIZES = bench.SMOKE
    for arch in ("tmbsn", "nbsn"):
        assert bench.measure("forward264", arch, "torch", 1)["flops"] > 0
    assert bench._train_crop("nbsn") == 64 and bench._train_crop("tmbsn") == bench.SMOKE.train_crop
    assert bench.measure("train_step", "nbsn", "torch", 1)["median_s"] > 0
