"""The TM-BSN release's NBSN student (ambsn_jax.nets.nbsn): its PyTorch twin computes the same
numbers at any size, its key map covers the release's key list exactly, its state dicts tell
their own widths, and the twin equals the release's own code (opt-in: AMBSN_TMBSN_RELEASE)."""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ambsn_jax.checkpoint import torch_port
from ambsn_jax.checkpoint.store import params_of
from ambsn_jax.convert.flax2torch import params_to_state_dict
from ambsn_jax.convert.reference import twin_of
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.nets.nbsn import NBSNConfig, config_from_state_dict, key_map
from tests.helpers import image, numpy_sd, spec_shapes, tmbsn_release

SMALL = NBSNConfig(base_ch=4, depth=2)
RELEASE = os.environ.get("AMBSN_TMBSN_RELEASE")


@pytest.mark.parametrize("shape", [(1, 13, 22), (2, 8, 12)])
def test_matches_its_pytorch_twin_at_any_size(flax_model, reference, assert_parity, rng, shape):
    """13 x 22 is no multiple of 2**depth (ceil-mode pooling, upsampled maps cropped); 8 x 12 is one."""
    model, ref = flax_model(SMALL), reference(SMALL)
    x = image(rng, *shape)
    forward = jax.jit(lambda v: model(v))
    assert_parity(forward, ref.bsn, x, tol=1e-3)  # 0..255 scale, as the student's test
    assert forward(jnp.asarray(x)).shape == x.shape


def test_key_map_covers_exactly_the_release_key_list():
    """The release's NBSN_SIDD.pth key list (names and shapes, no weights), bare keys."""
    want = spec_shapes("nbsn_state_dict.tsv")
    cfg = NBSNConfig()
    assert config_from_state_dict({k: np.zeros(s, np.float32) for k, s in want.items()}) == cfg
    assert set(key_map(cfg)) == set(want)
    twin = twin_of(cfg).state_dict()
    assert {k: tuple(v.shape) for k, v in twin.items()} == want


def test_state_dicts_map_both_ways_and_tell_the_config():
    cfg = NBSNConfig(base_ch=4, depth=3, out_ch=1)
    params = jax.jit(lambda: jax.tree.map(lambda a: a + 0.5, params_of(registry.build("nbsn", cfg))))()
    sd = {k.removeprefix("bsn."): v for k, v in params_to_state_dict(params, cfg).items()}
    assert torch_port.detect_arch(sd) == "nbsn"
    back, typed = torch_port.params_from_state_dict(sd)
    assert typed == cfg
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_a_state_dict_without_its_last_conv_is_refused(official_state_dict):
    sd = numpy_sd(official_state_dict(SMALL))
    del sd["bsn.dec1_1.weight"]
    with pytest.raises(UserError, match="not an NBSN checkpoint"):
        torch_port.params_from_state_dict(sd)


def test_bad_widths_are_refused_naming_the_field():
    with pytest.raises(UserError, match="depth must be at least 1"):
        registry.network_config("nbsn", {"depth": 0})


def _release_class():
    return tmbsn_release("model/NBSN102.py").N_BSN


@pytest.mark.skipif(not RELEASE, reason="set AMBSN_TMBSN_RELEASE to a TM-BSN release checkout to compare with its code")
def test_the_twin_is_the_release_network():
    """Same keys in the same order; on a multiple of 32 (no padding) the same numbers."""
    torch.manual_seed(0)
    release = _release_class()().eval()
    twin = twin_of(NBSNConfig()).eval()
    assert list(twin.state_dict()) == list(release.state_dict())
    twin.load_state_dict(release.state_dict(), strict=True)
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(twin.unit(x), release(x), rtol=0, atol=0)
        torch.testing.assert_close(twin(255 * x) / 255, release(x), rtol=0, atol=1e-5)  # x * 255 / 255 != x


def test_the_release_width_has_the_release_parameter_count():
    """1,021,107: the count of the release's NBSN_SIDD.pth (and its README's 1.02M)."""
    cfg = NBSNConfig()
    abstract = jax.eval_shape(lambda: params_of(registry.build("nbsn", cfg)))
    assert sum(int(np.prod(a.shape)) for a in jax.tree.leaves(abstract)) == 1_021_107
    assert sum(p.numel() for p in twin_of(cfg).parameters()) == 1_021_107
