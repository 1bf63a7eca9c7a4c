"""The release's inference (ambsn_jax.inference.release) against its PyTorch reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.errors import UserError
from ambsn_jax.inference.release import (
    ENSEMBLES,
    InferenceConfig,
    default_inference,
    denoise,
    pd_forward,
    postprocess,
    self_ensemble,
)
from ambsn_jax.nets.ambsn import AMBSNConfig
from ambsn_jax.ops.precision import default_precision
from ambsn_jax.nets.apbsn import APBSNConfig
from ambsn_jax.nets.mmbsn import MMBSNConfig
from ambsn_jax.nets.student import StudentConfig
from tests.helpers import RELEASE, image

CONFIGS = {"ambsn": AMBSNConfig(base_ch=8), "apbsn": APBSNConfig(base_ch=8), "mmbsn": MMBSNConfig(base_ch=8)}
# Width 16: see tests/nets/test_apbsn.py.
NARROW = {"apbsn": APBSNConfig(base_ch=16), "mmbsn": MMBSNConfig(base_ch=16)}


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
    cfg = InferenceConfig(pd_a=5, pd_pad=2, tta=tta, r3=r3)
    x = image(rng, 1, h, w)
    # With TTA off the release runs R3 on x padded to a multiple of pd_b, and returns that size.
    jmask, tmask = r3_masks(rng, (1, h + h % 2, w + w % 2, 3) if not tta else x.shape)

    def ours(v):
        return denoise(model, v, None, cfg, masks=jmask if r3 else None)

    def release(v):
        return ref.denoise(v, masks=tmask)[:, :, :h, :w]

    assert_parity(ours, release, x)


def test_odd_size_crash_of_the_release_is_fixed(flax_model, reference, assert_parity, rng):
    x = image(rng, 1, 61, 80)
    ref = reference(8, R3=False)
    with pytest.raises(RuntimeError):  # A (62 x 80) + B (61 x 80): the release's bug
        ref.denoise(torch.from_numpy(x.transpose(0, 3, 1, 2)))
    # What the release meant: both passes cropped. On x zero-padded to an even 62 rows it
    # works, and pads exactly as the port pads the odd image.
    cfg = InferenceConfig(pd_a=5, pd_pad=2, r3=False)
    even = np.pad(x, ((0, 0), (0, 1), (0, 0), (0, 0)))
    got = np.asarray(denoise(flax_model(8), jnp.asarray(x), None, cfg))
    with torch.no_grad():
        want = ref.denoise(torch.from_numpy(np.ascontiguousarray(even.transpose(0, 3, 1, 2))))
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1)[:, :61], rtol=0, atol=1e-4)
    # And with R3 on, the port returns the input's size, finite.
    out = denoise(flax_model(8), jnp.asarray(x), jax.random.key(0), RELEASE)
    assert out.shape == x.shape and bool(jnp.all(jnp.isfinite(out)))


@pytest.mark.parametrize("arch", list(NARROW))
def test_family_pd2_and_denoise_parity(flax_model, reference, assert_parity, rng, arch):
    model, ref = flax_model(NARROW[arch]), reference(NARROW[arch], tta=False)
    assert_parity(lambda v: pd_forward(model, v, 2), lambda v: ref(v, pd=2), image(rng, 1, 16, 20))
    h, w = 15, 21  # odd: R3 runs on the image padded to 16 x 22, as the releases do
    m = rng.uniform(size=(8, 1, h + 1, w + 1, 3)) < 0.16
    tmask = torch.from_numpy(np.ascontiguousarray(m.transpose(0, 1, 4, 2, 3)))
    cfg = default_inference(CheckpointMeta.for_release(arch, NARROW[arch], source="test"))
    assert_parity(
        lambda v: denoise(model, v, None, cfg, masks=jnp.asarray(m)),
        lambda v: ref.denoise(v, masks=tmask)[:, :, :h, :w],  # the releases return the padded size
        image(rng, 1, h, w),
    )


@pytest.mark.parametrize("arch", list(CONFIGS))
def test_default_inference_follows_the_architecture_and_the_training_pd(arch):
    released = default_inference(CheckpointMeta.for_release(arch, CONFIGS[arch], source="test"))
    assert released == InferenceConfig(pd_a=5, pd_pad=2, tta=arch == "ambsn", precision=default_precision())
    assert released.r3 and released.pd_b == 2 and (released.r3_t, released.r3_p) == (8, 0.16)
    trained = CheckpointMeta.for_network(arch, CONFIGS[arch], train_pd=4, train_pd_pad=1, source="test")
    cfg = default_inference(trained, tta=True, r3=False, self_ensemble=True, precision="bf16")
    # AM-BSN fuses PD 2 with the PD it was trained at; AP-BSN and MM-BSN never fuse, tta=True or not.
    assert (cfg.pd_a, cfg.pd_pad, cfg.tta) == (4, 1, arch == "ambsn")
    assert (cfg.r3, cfg.self_ensemble, cfg.precision) == (False, 8, "bf16")
    assert not default_inference(trained, tta=False).tta


def test_a_students_default_inference_is_one_pass_of_the_network(rng):
    """No PD, no fusion, no R3, even when asked for; self-ensemble still applies."""
    meta = CheckpointMeta.for_release("student", StudentConfig(base_ch=4, depth=1), source="test")
    cfg = default_inference(meta, tta=True, r3=True)
    assert (cfg.pd_a, cfg.pd_b, cfg.pd_pad, cfg.tta, cfg.r3) == (1, 1, 0, False, False)
    assert default_inference(meta, self_ensemble=True).self_ensemble == 8
    net = lambda v: v * 2.0 + 1.0  # noqa: E731 - any function: the network alone is applied
    x = jnp.asarray(image(rng, 1, 7, 5))
    np.testing.assert_array_equal(np.asarray(denoise(net, x, jax.random.key(0), cfg)), np.asarray(net(x)))


@pytest.mark.parametrize("arch,config,hole", [("tmbsn", {"base_ch": 4, "blocks": 1}, 2), ("nbsn", {"base_ch": 4, "depth": 2}, None)])
def test_tmbsn_and_nbsn_reflect_their_input_by_16_through_one_switch(rng, arch, config, hole):
    """Both releases' benchmark: the input reflected by 16 (`reflect_pad`), one pass, cropped,
    with no padding inside the pass, for metadata as earlier versions wrote it, whatever PD
    padding it says the weights were trained with."""
    meta = CheckpointMeta.from_json(
        {"arch": arch, "config": config, "train_pd": 1, "train_pd_pad": 2, "source": "old.pth", "tool_version": "0.3.0"}, "old"
    )
    cfg = default_inference(meta, r3=True)
    assert (cfg.reflect_pad, cfg.pd_pad, cfg.pd_b, cfg.r3, cfg.hole) == (16, 0, 1, False, hole)
    assert cfg.release_options()["pad"] == 16 and ("h" in cfg.release_options()) == (hole is not None)
    net = lambda v: jnp.cumsum(v, axis=1) * 0.5 + v[:, :, ::-1]  # noqa: E731 - sees where the padding is
    x = jnp.asarray(image(rng, 1, 9, 13))
    padded = jnp.pad(x, ((0, 0), (16, 16), (16, 16), (0, 0)), mode="reflect")
    np.testing.assert_allclose(np.asarray(denoise(net, x, None, cfg)), np.asarray(net(padded))[:, 16:-16, 16:-16], rtol=1e-6)


def test_inference_config_needs_the_training_pd_and_reports_the_release_names():
    with pytest.raises(TypeError):
        InferenceConfig()  # type: ignore[call-arg]
    assert RELEASE.release_options() == {
        "pd_a": 5, "pd_b": 2, "pd_pad": 2, "R3": True, "R3_T": 8, "R3_p": 0.16, "tta": True,
        "self_ensemble": 1, "precision": "highest", "winograd": False,
    }  # fmt: skip


def test_postprocess_rounds_half_up_and_clips():
    y = jnp.array([-3.0, -0.4, 0.49, 0.5, 1.5, 254.49, 254.5, 300.0])
    np.testing.assert_array_equal(postprocess(y), [0, 0, 0, 1, 2, 254, 255, 255])
    host = postprocess(np.asarray(y))  # NumPy in: NumPy out, the same values, no JAX op compiled
    assert isinstance(host, np.ndarray) and host.dtype == np.float32
    np.testing.assert_array_equal(host, postprocess(y))


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
    out = self_ensemble(shift, x, jax.random.key(0))
    assert np.abs(out - shift(x, None)).max() > 1
    # The mean of the shift's 8 orientations: each pixel averages its 4 neighbours' 2 visits each.
    want = sum(jnp.roll(x, s, axis=a) for a in (1, 2) for s in (1, -1)) / 4
    np.testing.assert_allclose(out, want, rtol=1e-5)


def _shift(x, key):
    return jnp.roll(x, 1, axis=2) + 0.1 * jnp.roll(x, 2, axis=1)  # no rotation or flip commutes with it


@pytest.mark.parametrize("size", [2, 4, 8])
@pytest.mark.parametrize("h,w", [(6, 6), (6, 9)])
def test_a_self_ensemble_is_the_mean_of_one_pass_over_its_orientations(rng, size, h, w):
    x = jnp.asarray(image(rng, 2, h, w))
    passes = []
    for k, flip in ENSEMBLES[size]:
        y = jnp.rot90(_shift(jnp.rot90(x[:, :, ::-1] if flip else x, k, axes=(1, 2)), None), -k, axes=(1, 2))
        passes.append(y[:, :, ::-1] if flip else y)
    want = np.mean(np.stack(passes), axis=0)
    np.testing.assert_allclose(self_ensemble(_shift, x, jax.random.key(0), size), want, rtol=1e-5, atol=1e-5)
    # As documented (--self-ensemble's help): 2 adds the half turn, 4 are the rotations, 8 all.
    quarter_turns = {2: {0, 2}, 4: {0, 1, 2, 3}, 8: {0, 1, 2, 3}}[size]
    assert set(ENSEMBLES[size]) == {(k, f) for k in quarter_turns for f in {False, size == 8}}


def test_the_self_ensemble_size_comes_from_the_metadata_and_switches_override_it():
    meta = CheckpointMeta.for_release("student", StudentConfig(base_ch=4, depth=1), source="test", self_ensemble=4)
    assert default_inference(meta).self_ensemble == 4
    assert default_inference(meta, self_ensemble=False).self_ensemble == 1
    assert default_inference(meta, self_ensemble=True).self_ensemble == 8
    assert default_inference(CheckpointMeta.for_release("student", StudentConfig(base_ch=4, depth=1), source="test")).self_ensemble == 1
    with pytest.raises(UserError, match="self-ensemble of 3 orientations: give one of 1, 2, 4, 8"):
        default_inference(meta, self_ensemble=3)
