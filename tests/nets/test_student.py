"""The distilled student (ambsn_jax.nets.student): its PyTorch twin computes the same numbers,
any image size goes through, the untrained network returns its input, and its state dicts map
both ways and tell their own width and depth."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ambsn_jax.checkpoint.store import params_of
from ambsn_jax.checkpoint import torch_port
from ambsn_jax.convert.flax2torch import params_to_state_dict
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.nets.student import StudentConfig, config_from_state_dict
from tests.helpers import image, numpy_sd

SMALL = StudentConfig(base_ch=4, depth=2)


@pytest.mark.parametrize("shape", [(1, 13, 22), (2, 8, 8), (1, 1, 3)])
def test_matches_its_pytorch_twin_at_any_size(flax_model, reference, assert_parity, rng, shape):
    """Sizes that are no multiple of 2**depth (and one of a single row) go through the edge
    padding and the crop back; the twin's random init has a non-zero tail."""
    model, ref = flax_model(SMALL), reference(SMALL)
    x = image(rng, *shape)
    forward = jax.jit(lambda v: model(v))  # eager, each of the U-Net's small ops would compile alone
    assert_parity(forward, ref.bsn, x, tol=1e-3)  # outputs are on the 0..255 scale here
    assert forward(jnp.asarray(x)).shape == x.shape


def test_the_untrained_student_returns_its_input(rng):
    x = jnp.asarray(image(rng, 1, 10, 7))
    @jax.jit
    def untrained(v):  # built inside jit too: an eager init compiles every initializer alone
        return registry.build("student", SMALL)(v)

    np.testing.assert_array_equal(np.asarray(untrained(x)), np.asarray(x))


def test_state_dicts_map_both_ways_and_tell_the_config():
    cfg = StudentConfig(base_ch=4, depth=3, blocks=1)
    params = jax.jit(lambda: jax.tree.map(lambda a: a + 0.5, params_of(registry.build("student", cfg))))()
    sd = {k.removeprefix("bsn."): v for k, v in params_to_state_dict(params, cfg).items()}
    assert torch_port.detect_arch(sd) == "student"
    assert config_from_state_dict(sd) == cfg
    back, typed = torch_port.params_from_state_dict(sd)
    assert typed == cfg
    jax.tree.map(np.testing.assert_array_equal, back, params)


def test_a_state_dict_without_head_is_refused(official_state_dict):
    sd = numpy_sd(official_state_dict(SMALL))
    del sd["bsn.head.weight"]
    with pytest.raises(UserError, match="not a student checkpoint"):
        torch_port.params_from_state_dict(sd)


def test_bad_widths_are_refused_naming_the_field():
    with pytest.raises(UserError, match="depth must not be negative"):
        registry.network_config("student", {"depth": -1})
    with pytest.raises(UserError, match="base_ch must be at least 1"):
        registry.network_config("student", {"base_ch": 0})
