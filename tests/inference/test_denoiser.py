"""The compiled batch denoiser (ambsn_jax.inference.denoiser)."""

from __future__ import annotations

import dataclasses
import logging

import jax
import jax.numpy as jnp
import numpy as np

from ambsn_jax.checkpoint.store import params_of
from ambsn_jax.inference.denoiser import BatchDenoiser
from ambsn_jax.inference.keys import fold_in_each
from ambsn_jax.inference.release import InferenceConfig, denoise
from tests.helpers import RELEASE, bound, image, keys


def test_each_image_is_the_release_denoise_with_its_own_key(flax_model, rng):
    """Image i of a batch is `denoise` of that image alone with keys[i]: no other image in the
    batch changes it, so scores do not depend on the batch size."""
    model = flax_model(8)
    cfg = dataclasses.replace(RELEASE, tta=False)
    x = image(rng, 3, 12, 10)
    k = keys(3)
    out = np.asarray(bound(model, cfg)(x, k))
    for i in range(3):
        want = denoise(model, jnp.asarray(x[i : i + 1]), k[i], cfg)[0]
        np.testing.assert_allclose(out[i], want, rtol=0, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(bound(model, cfg)(x[1:], k[1:])), out[1:])


def test_bound_and_batch_denoisers_share_one_program(flax_model, rng):
    model = flax_model(8)
    cfg = dataclasses.replace(RELEASE, tta=False, r3=False)
    bd = BatchDenoiser("ambsn", model.config, cfg)
    params = params_of(model)
    x = image(rng, 2, 8, 8)
    bd.compile(params, x.shape)
    b = bd.bind(params)
    assert b.batch_denoiser is bd and b.cfg is cfg and b.min_side() == bd.min_side() == cfg.pd_pad + 1
    np.testing.assert_array_equal(np.asarray(b(x, keys(2))), np.asarray(bd.run(params, x, keys(2))))
    # Other parameters bound to the same program: other outputs.
    zero = jax.tree.map(jnp.zeros_like, params)
    np.testing.assert_array_equal(np.asarray(bd.bind(zero)(x, keys(2))), 0)


def test_compile_ahead_is_the_program_a_call_runs(flax_model, rng, caplog):
    """`compile` fills jit's cache: the first call after it compiles nothing (a validation run's
    first block used to compile the network a second time)."""
    model = flax_model(8)
    bd = BatchDenoiser("ambsn", model.config, dataclasses.replace(RELEASE, tta=False, r3=False))
    b = bd.bind(params_of(model))
    x = image(rng, 1, 8, 8)
    b.compile(x.shape)
    with jax.log_compiles(), caplog.at_level(logging.WARNING):
        b.run(x, keys(1))
    assert not [r for r in caplog.records if "Compiling jit(run)" in r.getMessage()]


def test_fold_in_each_is_fold_in_per_index():
    key = jax.random.key(5)
    got = fold_in_each(key, [0, 3, 7])
    for i, k in zip([0, 3, 7], got):
        assert np.array_equal(jax.random.key_data(k), jax.random.key_data(jax.random.fold_in(key, i)))


def test_bf16_inference_rounds_the_convolutions_only(flax_model, rng):
    """bfloat16 convolutions move the output by bfloat16's rounding, no more; the output stays
    float32 and the model itself keeps float32."""
    model = flax_model(8)
    x = image(rng, 2, 24, 24)
    k = keys(2)
    f32 = np.asarray(bound(model)(x, k))
    bf16 = bound(model, InferenceConfig(pd_a=5, pd_pad=2, precision="bf16"))(x, k)
    assert bf16.dtype == np.float32
    gap = np.abs(np.asarray(bf16) - f32).max()
    assert 0 < gap < 0.01 * np.abs(f32).max()  # bfloat16 keeps 8 significant bits: 0.4% a rounding
    np.testing.assert_array_equal(np.asarray(bound(model)(x, k)), f32)
    assert model.head.kernel.get_value().dtype == jnp.float32
