"""The Flax AM-BSN against the PyTorch reference of the release (CPU, small)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from ambsn_jax.convert import reference
from ambsn_jax.inference.release import pd_forward
from ambsn_jax.nets import ambsn
from ambsn_jax.nets.ambsn import AMBSN, AMBSNConfig
from ambsn_jax.nets.masks import blind_spot_mask
from tests.helpers import assert_release_params, image, n_params

RELEASE_PARAMS = 3_837_251


def fresh_model(base_ch: int = 8, seed: int = 0, **arch) -> AMBSN:
    """A PyTorch-default-init model: its stored masked kernels are non-zero at the blind taps."""
    return AMBSN(AMBSNConfig(base_ch=base_ch, **arch), rngs=nnx.Rngs(seed))


def training_grads(model: AMBSN, x: jax.Array) -> nnx.State:
    """Gradients of the release's self-supervised loss, L1(forward(x, pd=5), x)."""
    return nnx.grad(lambda m: jnp.mean(jnp.abs(pd_forward(m, x, 5) - x)))(model)


def to_state_dict(model: AMBSN) -> dict[str, torch.Tensor]:
    """The release's state dict (keys `bsn.*`) of a Flax model: both names of a shared module
    are filled from its one parameter."""
    flat = {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    sd = {}
    for key, path in ambsn.key_map(model.config).items():
        value = flat[path].transpose(3, 2, 0, 1) if key.endswith(".weight") else flat[path]
        sd[f"bsn.{key}"] = torch.from_numpy(np.array(value))  # a writable copy, as torch wants
    c = model.config.base_ch
    for key, (_, pattern) in ambsn.mask_map(model.config).items():
        sd[f"bsn.{key}"] = torch.from_numpy(np.broadcast_to(pattern, (c, c, *pattern.shape)).copy())
    return sd


def test_parameter_count_is_the_release():
    assert_release_params(AMBSNConfig(), RELEASE_PARAMS)


@pytest.mark.slow
def test_full_width_parity(flax_model, reference, assert_parity, rng):
    # The PD-2 / PD-5 forward at full width is what tests/cli/test_convert.py::test_full_width verifies.
    assert_parity(flax_model(128), reference(128).bsn, image(rng, 1, 24, 24))


@pytest.mark.parametrize("base_ch", [8, 16])
@pytest.mark.parametrize("shape", [(1, 13, 17), (2, 20, 9), (1, 7, 31)])
def test_narrow_bsn_parity(flax_model, reference, assert_parity, rng, base_ch, shape):
    assert_parity(flax_model(base_ch), reference(base_ch).bsn, image(rng, *shape))


def test_gradients_are_zero_exactly_at_blind_taps(rng):
    model = fresh_model(8)
    grads = training_grads(model, jnp.asarray(image(rng, 1, 20, 20)))
    for branch, kind, k in (("branch_local", "central", 3), ("branch_global", "x", 5)):
        kernel = getattr(model, branch).masked.kernel.get_value()
        g = np.abs(np.asarray(grads[branch]["masked"]["kernel"].get_value())).sum(axis=(2, 3))
        blind = blind_spot_mask(kind, k) == 0
        assert np.all(np.asarray(kernel)[blind] != 0)  # the stored taps do not mask themselves
        assert np.all(g[blind] == 0)
        assert np.all(g[~blind] > 0)


def test_output_ignores_its_own_input_pixel(rng):
    model = fresh_model(8)  # blind taps non-zero in storage: the forward must mask them
    # Positive weights keep every ReLU open on a positive image, so no path through the
    # network is dead: only the masks can keep pixel (8, 8) out of its own output.
    nnx.update(model, jax.tree.map(jnp.abs, nnx.state(model, nnx.Param)))
    x = image(rng, 1, 17, 17)
    poked = x.copy()
    poked[0, 8, 8] += 100.0
    delta = np.abs(np.asarray(model(jnp.asarray(poked))) - np.asarray(model(jnp.asarray(x))))[0]
    assert np.all(delta[8, 8] == 0)
    near = delta[7:10, 7:10].copy()
    near[1, 1] = 1.0
    assert np.all(near > 0)  # while its neighbours do see it


def test_shared_weights_stay_one_parameter_through_adam(assert_parity, rng):
    model = fresh_model(8)
    before = np.asarray(model.branch_local.conv1_1.kernel.get_value()).copy()
    optimizer = nnx.Optimizer(model, optax.adam(1e-2), wrt=nnx.Param)
    x = jnp.asarray(image(rng, 1, 20, 20))
    optimizer.update(model, training_grads(model, x))

    assert not np.array_equal(before, model.branch_local.conv1_1.kernel.get_value())
    ref = reference.ReleaseDenoiser(base_ch=8)
    # torch counts each shared module once: a port with two copies would count more.
    assert n_params(model) == sum(p.numel() for p in ref.parameters())
    # Exported with its one tensor under both names, the trained model still is the release's net.
    ref.load_state_dict(to_state_dict(model), strict=True)
    assert_parity(model, ref.bsn, np.asarray(x))


def test_reference_refuses_configs_the_release_cannot_build():
    from ambsn_jax.errors import UserError

    with pytest.raises(UserError, match="not the release's"):
        reference.twin_of(AMBSNConfig(base_ch=8, dcl1_num=1))
    assert sum(p.numel() for p in reference.twin_of(AMBSNConfig(base_ch=8)).parameters()) == n_params(fresh_model(8))
