"""Shared fixtures: random-init networks of the PyTorch reference, and their Flax twins.

The factories take a network: a width C for AM-BSN, or a config of `ambsn_jax.family`
(e.g. `MMBSNConfig(base_ch=8)`), which names the architecture too.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable

import jax
import numpy as np
import pytest
import torch

from ambsn_jax import torch_port
from ambsn_jax.family import Model, ModelConfig, arch_of
from ambsn_jax.model import AMBSNConfig
from convert.reference import Denoiser, release_bsn

# The commands run in-process here keep compiled programs on disk (ambsn_jax.cli); the tests'
# small shapes stay out of the user's cache (test_cli.py checks the cache itself).
os.environ["JAX_COMPILATION_CACHE_DIR"] = ""

# Parity is defined against float32 convolutions; TF32 (the GPU default) alone moves outputs
# by ~0.3, so the tests pin full precision wherever they run.
jax.config.update("jax_default_matmul_precision", "highest")

# Random-init outputs are ~0.3 at most, 1000x below trained 0..255 outputs, and the measured
# float32 gap is ~1e-7: the tests hold parity far tighter than the 5e-3 so that a
# small mistake (one bias, one tap) cannot hide under the bound.
PARITY_TOL = 1e-4

StateDict = dict[str, torch.Tensor]
NetSpec = int | ModelConfig  # a width C for AM-BSN, or any network's config


def _release_bsn(net: NetSpec) -> torch.nn.Module:
    cfg = AMBSNConfig(base_ch=net) if isinstance(net, int) else net
    return release_bsn(arch_of(cfg), cfg.to_dict())


@pytest.fixture(scope="session")
def official_state_dict() -> Callable[[NetSpec], StateDict]:
    """Factory: network -> the state dict (keys `bsn.*`) of a random-init reference Denoiser.

    Taken before any forward, so its masked taps are still non-zero (the reference zeroes
    them in place when it runs), and its biases are non-zero (PyTorch's default init): a
    port that skipped a mask or a bias would show.
    """

    @functools.cache
    def make(net: NetSpec) -> StateDict:
        torch.manual_seed(net if isinstance(net, int) else net.base_ch)
        return {k: v.clone() for k, v in Denoiser(bsn=_release_bsn(net)).state_dict().items()}

    return make


@pytest.fixture(scope="session")
def reference(official_state_dict) -> Callable[..., Denoiser]:
    """Factory: (network, **switches of the release's Denoiser) -> a fresh reference with those weights."""

    def make(net: NetSpec, **switches) -> Denoiser:
        ref = Denoiser(bsn=_release_bsn(net), **switches)
        ref.load_state_dict(official_state_dict(net), strict=True)
        return ref.eval()

    return make


@pytest.fixture(scope="session")
def flax_model(official_state_dict) -> Callable[[NetSpec], Model]:
    """Factory: network -> the Flax network converted from `official_state_dict` (shared: no training)."""

    @functools.cache
    def make(net: NetSpec) -> Model:
        sd = official_state_dict(net)
        return torch_port.model_from_state_dict({k: v.numpy() for k, v in sd.items()})

    return make


def _nchw(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


def _nhwc(y: torch.Tensor) -> np.ndarray:
    return y.detach().numpy().transpose(0, 2, 3, 1)


@pytest.fixture(scope="session")
def assert_parity() -> Callable[..., None]:
    """(jax_fn, torch_fn, x NHWC numpy, tol) -> asserts max |jax_fn(x) - torch_fn(x as NCHW)| <= tol."""

    def check(jax_fn: Callable, torch_fn: Callable, x: np.ndarray, tol: float = PARITY_TOL) -> None:
        with torch.no_grad():
            want = _nhwc(torch_fn(_nchw(x)))
        got = np.asarray(jax_fn(jax.numpy.asarray(x)))
        assert got.shape == want.shape
        diff = float(np.max(np.abs(got - want)))
        assert diff <= tol, f"max abs diff {diff:.3e} > {tol:g}"

    return check


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
