"""Shared fixtures: random-init networks of the PyTorch reference and their Flax twins, and the
tiny SIDD-format data sets and checkpoints that the evaluation and command-line tests share.

The network factories take a network: a width C for AM-BSN, or a typed config of any network
of `ambsn_jax.nets.registry` (e.g. `MMBSNConfig(base_ch=8)`), which names the architecture too.
"""

from __future__ import annotations

import atexit
import functools
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from flax import nnx

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint.store import save_params
from ambsn_jax.checkpoint import torch_port
from ambsn_jax.convert.reference import ReleaseDenoiser, twin_of
from ambsn_jax.data.sidd import save_blocks_mat
from ambsn_jax.evaluation.sidd import BENCHMARK_NOISY, VALIDATION_CLEAN, VALIDATION_NOISY
from ambsn_jax.nets import registry
from ambsn_jax.nets.ambsn import AMBSNConfig
from tests import helpers

# Compiled programs are kept on disk for the session only: the tests' small shapes stay out of
# the user's cache (tests/cli/test_common.py checks that cache), while the many runs of the
# same tiny networks, in this process and in the subprocesses that inherit the variable,
# compile each program once.
_CACHE = tempfile.mkdtemp(prefix="ambsn-test-xla-")
# The tests' networks are tiny: compiling is most of their time and LLVM's optimisation of the
# generated code buys little, at level 0 programs compile about 1.4x faster (measured on a
# network's init and train step). Set before any backend starts, and inherited by subprocesses.
os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} --xla_backend_optimization_level=0".strip()
atexit.register(shutil.rmtree, _CACHE, ignore_errors=True)
os.environ["JAX_COMPILATION_CACHE_DIR"] = _CACHE
jax.config.update("jax_compilation_cache_dir", _CACHE)
# JAX keeps only programs that took a second to compile; the tests' subprocesses (launched
# runs, resumes, benches) recompile the same many small programs, so every one is kept.
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)

# Parity is defined against float32 convolutions; TF32 (the GPU default) alone moves outputs
# by ~0.3, so the tests pin full precision wherever they run.
jax.config.update("jax_default_matmul_precision", "highest")

StateDict = dict[str, torch.Tensor]
NetSpec = int | object  # a width C for AM-BSN, or any network's typed config


def _typed(net: NetSpec):
    return AMBSNConfig(base_ch=net) if isinstance(net, int) else net


def _release_bsn(net: NetSpec) -> torch.nn.Module:
    cfg = _typed(net)
    return twin_of(cfg)


@pytest.fixture(scope="session")
def official_state_dict() -> Callable[[NetSpec], StateDict]:
    """Factory: network -> the state dict (keys `bsn.*`) of a random-init ReleaseDenoiser.

    Taken before any forward, so its masked taps are still non-zero (the reference zeroes
    them in place when it runs), and its biases are non-zero (PyTorch's default init): a
    port that skipped a mask or a bias would show.
    """

    @functools.cache
    def make(net: NetSpec) -> StateDict:
        torch.manual_seed(net if isinstance(net, int) else net.base_ch)
        return {k: v.clone() for k, v in ReleaseDenoiser(bsn=_release_bsn(net)).state_dict().items()}

    return make


@pytest.fixture(scope="session")
def reference(official_state_dict) -> Callable[..., ReleaseDenoiser]:
    """Factory: (network, **switches of the release's wrapper) -> a fresh reference with those weights."""

    def make(net: NetSpec, **switches) -> ReleaseDenoiser:
        ref = ReleaseDenoiser(bsn=_release_bsn(net), **switches)
        ref.load_state_dict(official_state_dict(net), strict=True)
        return ref.eval()

    return make


@pytest.fixture(scope="session")
def flax_model(official_state_dict) -> Callable[[NetSpec], nnx.Module]:
    """Factory: network -> the Flax network converted from `official_state_dict` (shared: no training)."""

    @functools.cache
    def make(net: NetSpec) -> nnx.Module:
        params, cfg = torch_port.params_from_state_dict(helpers.numpy_sd(official_state_dict(net)))
        return nnx.merge(registry.graphdef(registry.of_config(cfg).name, cfg), params)

    return make


@pytest.fixture(scope="session")
def assert_parity() -> Callable[..., None]:
    """(jax_fn, torch_fn, x NHWC numpy, tol) -> asserts max |jax_fn(x) - torch_fn(x as NCHW)| <= tol."""

    def check(jax_fn: Callable, torch_fn: Callable, x: np.ndarray, tol: float = helpers.PARITY_TOL) -> None:
        with torch.no_grad():
            want = helpers.nhwc(torch_fn(helpers.nchw(x)))
        got = np.asarray(jax_fn(jax.numpy.asarray(x)))
        assert got.shape == want.shape
        diff = float(np.max(np.abs(got - want)))
        assert diff <= tol, f"max abs diff {diff:.3e} > {tol:g}"

    return check


@pytest.fixture(scope="session")
def assert_alive(reference) -> Callable[[NetSpec], None]:
    """network -> asserts that its random-init reference's output varies across pixels well
    beyond the parity tolerance (helpers.PARITY_TOL), so that parity there means something."""

    def check(net: NetSpec) -> None:
        x = helpers.nchw(helpers.image(np.random.default_rng(0), 1, 13, 17))
        with torch.no_grad():
            y = reference(net).bsn(x)
        assert float(y.std(dim=(2, 3)).min()) > 5e-3

    return check


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


# --- tiny SIDD-format data and checkpoints (evaluation, command lines, the API) --------------


@pytest.fixture(scope="session")
def val_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sidd_val")
    noisy, clean = helpers.sidd_blocks(0)
    save_blocks_mat(root / VALIDATION_NOISY, noisy, "ValidationNoisyBlocksSrgb")
    save_blocks_mat(root / VALIDATION_CLEAN, clean, "ValidationGtBlocksSrgb")
    return root


@pytest.fixture(scope="session")
def bench_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sidd_bench")
    save_blocks_mat(root / BENCHMARK_NOISY, helpers.sidd_blocks(1)[0], "BenchmarkNoisyBlocksSrgb")
    return root


@pytest.fixture(scope="session")
def scaled_state_dict(official_state_dict) -> StateDict:
    """A random width-8 reference network with outputs around 128 +- 30 rather than ~0.3, so
    that rounding, channel order and both metrics see real values (~0.3 all rounds to 0)."""
    sd = {k: v.clone() for k, v in official_state_dict(8).items()}
    sd["bsn.tail.6.weight"] *= 100.0
    sd["bsn.tail.6.bias"] += 128.0
    return sd


@pytest.fixture(scope="session")
def scaled_params(scaled_state_dict) -> tuple[dict, AMBSNConfig]:
    """(params, typed config) of the scaled network."""
    return torch_port.params_from_state_dict(helpers.numpy_sd(scaled_state_dict))


@pytest.fixture(scope="session")
def model(scaled_params) -> nnx.Module:
    params, cfg = scaled_params
    return nnx.merge(registry.graphdef("ambsn", cfg), params)


@pytest.fixture(scope="session")
def ckpt(tmp_path_factory, scaled_params) -> Path:
    """The scaled network as an Orbax checkpoint (release PD: 5, padding 2)."""
    params, cfg = scaled_params
    path = tmp_path_factory.mktemp("ckpt") / "orbax"
    save_params(path, params, CheckpointMeta.for_release("ambsn", cfg, source="scaled test network"))
    return path


@pytest.fixture(scope="session")
def pth(tmp_path_factory, scaled_state_dict) -> Path:
    path = tmp_path_factory.mktemp("pth") / "release.pth"
    torch.save({"epoch": 1, "model_weight": {"denoiser": scaled_state_dict}}, path)
    return path


@pytest.fixture(scope="session")
def student_ckpt(tmp_path_factory, official_state_dict) -> Path:
    """A random student (C = 4, depth 2) as an Orbax checkpoint; its PyTorch twin's init, so
    that the tail is not the zeros that make an untrained student return its input."""
    from ambsn_jax.nets.student import StudentConfig

    params, cfg = torch_port.params_from_state_dict(helpers.numpy_sd(official_state_dict(StudentConfig(base_ch=4, depth=2))))
    path = tmp_path_factory.mktemp("student") / "orbax"
    save_params(path, params, CheckpointMeta.for_release("student", cfg, source="random test student"))
    return path


# Modules of whole training runs and multi-process evaluations, measured the longest: handed to
# the two pytest workers first, so that neither is left with one of them at the end while the
# other idles (with `--dist loadscope` a module runs on one worker, in collection order).
_LONGEST_FIRST = ("tests/train/", "tests/evaluation/test_parallel.py", "tests/convert/test_onnx_export.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    items.sort(key=lambda item: not item.nodeid.startswith(_LONGEST_FIRST))
