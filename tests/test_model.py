"""The Flax network, PD and inference against the PyTorch reference of the release (CPU, small)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import torch
from flax import nnx

from ambsn_jax import torch_port
from ambsn_jax.inference import (
    Denoiser,
    InferenceConfig,
    denoise,
    denoise_image,
    pd_forward,
    postprocess,
    self_ensemble,
)
from ambsn_jax.masks import blind_spot_mask
from ambsn_jax.model import AMBSN, AMBSNConfig
from ambsn_jax.pd import pd_down, pd_up
from convert import reference

RELEASE_PARAMS = 3_837_251  # spec §1


def n_params(model: nnx.Module) -> int:
    return sum(v.size for v in jax.tree.leaves(nnx.state(model, nnx.Param)))


def fresh_model(base_ch: int = 8, seed: int = 0, **arch) -> AMBSN:
    """A PyTorch-default-init model: its stored masked kernels are non-zero at the blind taps."""
    return AMBSN(AMBSNConfig(base_ch=base_ch, **arch), rngs=nnx.Rngs(seed))


def image(rng: np.random.Generator, n: int, h: int, w: int) -> np.ndarray:
    return rng.uniform(0, 255, (n, h, w, 3)).astype(np.float32)


def training_grads(model: AMBSN, x: jax.Array) -> nnx.State:
    """Gradients of the release's self-supervised loss, L1(forward(x, pd=5), x)."""
    return nnx.grad(lambda m: jnp.mean(jnp.abs(pd_forward(m, x, 5) - x)))(model)


def to_state_dict(model: AMBSN) -> dict[str, torch.Tensor]:
    """The release's state dict (keys `bsn.*`) of a Flax model: both names of a shared module
    are filled from its one parameter."""
    flat = {path: np.asarray(v.get_value()) for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
    sd = {}
    for key, path in torch_port.key_map(model.config).items():
        value = flat[path].transpose(3, 2, 0, 1) if key.endswith(".weight") else flat[path]
        sd[f"bsn.{key}"] = torch.from_numpy(np.array(value))  # a writable copy, as torch wants
    c = model.config.base_ch
    for key, (_, pattern) in torch_port.mask_buffers(model.config).items():
        sd[f"bsn.{key}"] = torch.from_numpy(np.broadcast_to(pattern, (c, c, *pattern.shape)).copy())
    return sd


# --- the network ---------------------------------------------------------------------------


def test_parameter_count_is_the_release():
    model = nnx.eval_shape(lambda: fresh_model(128))
    assert n_params(model) == RELEASE_PARAMS
    # torch counts a shared module once, as the port holds it once.
    assert sum(p.numel() for p in reference.AMBSN(base_ch=128).parameters()) == RELEASE_PARAMS


@pytest.mark.slow
def test_full_width_parity(flax_model, reference, assert_parity, rng):
    # The PD-2 / PD-5 forward at full width is what test_convert.py::test_full_width verifies.
    assert_parity(flax_model(128), reference(128).bsn, image(rng, 1, 24, 24))


@pytest.mark.parametrize("base_ch", [8, 16])
@pytest.mark.parametrize("shape", [(1, 13, 17), (2, 20, 9), (1, 7, 31)])
def test_narrow_bsn_parity(flax_model, reference, assert_parity, rng, base_ch, shape):
    assert_parity(flax_model(base_ch), reference(base_ch).bsn, image(rng, *shape))


def test_mask_patterns_are_the_spec():
    central = np.ones((3, 3))
    central[1, 1] = 0
    x_rows = ["01110", "10101", "11011", "10101", "01110"]
    x5 = np.array([[int(ch) for ch in row] for row in x_rows])
    np.testing.assert_array_equal(blind_spot_mask("central", 3), central)
    np.testing.assert_array_equal(blind_spot_mask("x", 5), x5)
    np.testing.assert_array_equal(reference.CENTRAL_3, central)
    np.testing.assert_array_equal(reference.X_5, x5)


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
    ref = reference.Denoiser(base_ch=8)
    # torch counts each shared module once: a port with two copies would count more.
    assert n_params(model) == sum(p.numel() for p in ref.parameters())
    # Exported with its one tensor under both names, the trained model still is the release's net.
    ref.load_state_dict(to_state_dict(model), strict=True)
    assert_parity(model, ref.bsn, np.asarray(x))


# --- pixel-shuffle down-sampling -----------------------------------------------------------

PD_CASES = [(1, 0), (1, 2), (2, 0), (2, 2), (3, 1), (5, 2)]


@pytest.mark.parametrize("f,pad", PD_CASES)
@pytest.mark.parametrize("shuffle", [False, True])
def test_pd_round_trip(rng, f, pad, shuffle):
    x = jnp.asarray(image(rng, 2, 4 * f, 3 * f))
    perm = jnp.asarray(rng.permutation(f * f)) if shuffle else None
    down = pd_down(x, f, pad, perm)
    assert down.shape == (2, 4 * f + 2 * f * pad, 3 * f + 2 * f * pad, 3)
    np.testing.assert_array_equal(pd_up(down, f, pad, perm), x)


@pytest.mark.parametrize("f,pad", [c for c in PD_CASES if c[0] > 1])
def test_pd_matches_reference(assert_parity, rng, f, pad):
    x = image(rng, 2, 4 * f, 3 * f)
    down, up = reference.pixel_shuffle_down_sampling, reference.pixel_shuffle_up_sampling
    assert_parity(lambda v: pd_down(v, f, pad), lambda v: down(v, f, pad), x, tol=0)
    mosaic = image(rng, 2, f * (4 + 2 * pad), f * (3 + 2 * pad))
    assert_parity(lambda v: pd_up(v, f, pad), lambda v: up(v, f, pad), mosaic, tol=0)


def test_pd_shuffle_moves_sub_images(rng):
    x = jnp.asarray(image(rng, 1, 4, 4))
    perm = jnp.array([3, 0, 1, 2])
    shuffled = pd_down(x, 2, 0, perm)
    np.testing.assert_array_equal(shuffled[:, :2, :2], x[:, 1::2, 1::2])  # sub-image 3 first


# --- inference -------------------------------------------------------------------------------


def r3_masks(rng: np.random.Generator, shape: tuple[int, ...], t: int = 8) -> tuple[jax.Array, torch.Tensor]:
    """The same R3 masks for both: (T, N, H, W, C) for JAX, (T, N, C, H, W) for the reference."""
    m = rng.uniform(size=(t, *shape)) < 0.16
    return jnp.asarray(m), torch.from_numpy(np.ascontiguousarray(m.transpose(0, 1, 4, 2, 3)))


@pytest.mark.parametrize(
    "tta,r3,h,w", [(True, False, 24, 18), (False, False, 15, 21), (True, True, 24, 18), (False, True, 15, 21)]
)
def test_denoise_matches_reference(flax_model, reference, assert_parity, rng, tta, r3, h, w):
    """Even sizes with TTA (where the release works), odd ones without; R3 masks injected."""
    model, ref = flax_model(16), reference(16, tta=tta, R3=r3)
    cfg = InferenceConfig(tta=tta, r3=r3)
    x = image(rng, 1, h, w)
    # With TTA off the release runs R3 on x padded to a multiple of pd_b, and returns that size.
    jmask, tmask = r3_masks(rng, (1, h + h % 2, w + w % 2, 3) if not tta else x.shape)

    def ours(v):
        return denoise(model, v, None, cfg, masks=jmask if r3 else None)

    def release(v):
        return ref.denoise(v, masks=tmask)[:, :, :h, :w]

    assert_parity(ours, release, x)


def test_odd_size_crash_of_the_release_is_fixed(flax_model, reference, rng):
    x = image(rng, 1, 61, 80)
    with pytest.raises(RuntimeError):  # A (62 x 80) + B (61 x 80): the release's bug
        reference(8, R3=False).denoise(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    out = Denoiser(flax_model(8))(x, jax.random.split(jax.random.key(0), len(x)))
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


def test_bf16_inference_rounds_the_convolutions_only(flax_model, rng):
    """bfloat16 convolutions move the output by bfloat16's rounding, no more; the output stays
    float32 and the model itself keeps float32."""
    model = flax_model(8)
    x = image(rng, 2, 24, 24)
    keys = jax.random.split(jax.random.key(0), 2)
    f32 = np.asarray(Denoiser(model)(x, keys))
    bf16 = Denoiser(model, InferenceConfig(bf16=True))(x, keys)
    assert bf16.dtype == jnp.float32
    gap = np.abs(np.asarray(bf16) - f32).max()
    assert 0 < gap < 0.01 * np.abs(f32).max()  # bfloat16 keeps 8 significant bits: 0.4% a rounding
    np.testing.assert_array_equal(np.asarray(Denoiser(model)(x, keys)), f32)


def test_postprocess_rounds_half_up_and_clips():
    y = jnp.array([-3.0, -0.4, 0.49, 0.5, 1.5, 254.49, 254.5, 300.0])
    np.testing.assert_array_equal(postprocess(y), [0, 0, 0, 1, 2, 254, 255, 255])


def _blur(x: jax.Array, key: jax.Array) -> jax.Array:
    """A 3x3 box blur then a pointwise nonlinearity: commutes with every rotation and flip."""
    p = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="edge")
    h, w = x.shape[1:3]
    box = sum(p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)) / 9
    return jnp.sqrt(box) + 0.01 * x


@pytest.mark.parametrize("h,w", [(6, 6), (6, 9)])
def test_self_ensemble_of_an_equivariant_function_is_the_function(rng, h, w):
    x = jnp.asarray(image(rng, 2, h, w))
    key = jax.random.key(0)
    np.testing.assert_allclose(self_ensemble(_blur, x, key), _blur(x, key), rtol=1e-5)


def test_self_ensemble_averages_orientations(rng):
    # Shifting right is not equivariant: the mean over orientations must differ from it.
    def shift(x, key):
        return jnp.roll(x, 1, axis=2)

    x = jnp.asarray(image(rng, 1, 6, 6))
    assert np.abs(self_ensemble(shift, x, jax.random.key(0)) - shift(x, None)).max() > 1


class _Identity:
    """Stands in for a Denoiser: returns its tiles unchanged."""

    cfg = InferenceConfig()

    def __call__(self, x, key):
        return x


def test_tiles_blend_without_seams(rng):
    # Any pixel's weights over the tiles covering it must sum to one: identity in, image out.
    img = image(rng, 1, 130, 170)[0]
    out = denoise_image(_Identity(), img, jax.random.key(0), tile=64, overlap=16)
    np.testing.assert_allclose(out, img, rtol=1e-6)


def test_tiled_matches_untiled_inside_tiles(rng):
    # One DCl per body keeps the receptive field at 8 PD-2 sub-image pixels (16 image pixels),
    # so pixels 20 from every tile edge see exactly what the untiled pass sees. Image borders
    # count as edges too: there PD sub-images see each other across their zero padding.
    denoiser = Denoiser(fresh_model(8, dcl1_num=1, dcl2_num=1), InferenceConfig(tta=False, r3=False))
    img = image(rng, 1, 130, 170)[0]
    key = jax.random.key(0)
    tile, overlap, margin = 64, 16, 20
    tiled = denoise_image(denoiser, img, key, tile=tile, overlap=overlap)
    whole = np.asarray(denoiser(img[None], key[None])[0])
    assert tiled.shape == img.shape and np.all(np.isfinite(tiled))

    def interior(size: int) -> np.ndarray:
        # Tile origins as denoise_image lays them out: stride tile - overlap, last one flush.
        starts = [*range(0, size - tile, tile - overlap), size - tile]
        ok = np.ones(size, bool)
        for s in starts:
            idx = np.arange(s, s + tile)
            ok[idx[(idx - s < margin) | (s + tile - idx <= margin)]] = False
        return ok

    rows, cols = interior(130), interior(170)
    assert rows.sum() > 10 and cols.sum() > 10
    diff = np.abs(tiled - whole)[np.ix_(rows, cols)]
    assert diff.max() < 1e-4
    assert np.abs(tiled - whole).max() > 1e-3  # the edges do matter, elsewhere


@pytest.mark.parametrize("size", [(20, 20), (2, 2)])
def test_tiny_images(flax_model, rng, size):
    img = image(rng, 1, *size)[0]
    out = denoise_image(Denoiser(flax_model(8)), img, jax.random.key(0))
    assert out.shape == img.shape and np.all(np.isfinite(out))
