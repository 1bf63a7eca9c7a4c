"""The release's Recharger (ambsn_jax.train.recharge): one target per pixel takes the noisy
value, all channels, the others stay; the draw is uniform over the targets; given the draw,
the release's own `Recharger` (opt-in: AMBSN_TMBSN_RELEASE)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import torch

from ambsn_jax.train.recharge import mix, recharge, recharge_batch
from tests.helpers import tmbsn_release


def test_each_pixel_gives_its_noisy_value_to_exactly_one_target():
    noisy = -jnp.ones((2, 30, 40, 3))
    targets = jnp.broadcast_to(jnp.arange(3.0)[:, None, None, None, None], (3, 2, 30, 40, 3))
    out = np.asarray(recharge(jax.random.key(0), noisy, targets))
    replaced = out == -1
    assert np.all(replaced.all(axis=-1) == replaced.any(axis=-1))  # all channels or none
    assert np.all(replaced[..., 0].sum(axis=0) == 1)  # one target per pixel
    kept = ~replaced
    np.testing.assert_array_equal(out[kept], np.asarray(targets)[kept])
    # Uniform: each of the 3 targets takes about a third of the 2,400 pixels (binomial sd ~23).
    shares = replaced[..., 0].reshape(3, -1).mean(axis=1)
    assert np.all(np.abs(shares - 1 / 3) < 0.04)


def test_a_single_target_becomes_the_noisy_input():
    noisy = jnp.full((1, 4, 5, 3), 7.0)
    out = recharge(jax.random.key(1), noisy, jnp.zeros((1, 1, 4, 5, 3)))
    np.testing.assert_array_equal(np.asarray(out[0]), np.asarray(noisy))


def test_mix_is_a_hand_computation():
    """Two targets of a 1 x 1 x 2 image: pixel 0 drew target 1, pixel 1 target 0."""
    noisy = jnp.array([[[[10.0, 11.0], [20.0, 21.0]]]])  # (1, 1, 2, C = 2)
    targets = jnp.stack([jnp.zeros((1, 1, 2, 2)), jnp.ones((1, 1, 2, 2))])
    out = mix(jnp.array([[[1, 0]]]), noisy, targets)
    want = [[[[0.0, 0.0], [20.0, 21.0]]], [[[10.0, 11.0], [1.0, 1.0]]]]
    np.testing.assert_array_equal(np.asarray(out)[:, 0], want)


def test_a_batch_keeps_its_layout_and_its_noisy_crops():
    """(N, H, W, 3 + 3K): the noisy channels stay, target k is channels 3 + 3k .. 5 + 3k."""
    noisy = -jnp.ones((2, 5, 6, 3))
    targets = [jnp.full((2, 5, 6, 3), float(k)) for k in range(4)]
    out = np.asarray(recharge_batch(jax.random.key(2), jnp.concatenate([noisy, *targets], axis=-1)))
    np.testing.assert_array_equal(out[..., :3], -1)
    for k in range(4):
        part = out[..., 3 + 3 * k : 6 + 3 * k]
        assert np.all((part == k) | (part == -1)) and np.any(part == k)
    assert np.all((out[..., 3:] == -1).reshape(2, 5, 6, 4, 3).all(axis=-1).sum(axis=-1) == 1)


def test_mix_is_the_release_recharger_given_its_draw(monkeypatch):
    """The release's `Recharger.apply` (utils.py, AMBSN_TMBSN_RELEASE), its `torch.randint` made
    to return our draw: the same targets, NCHW against NHWC."""
    utils = tmbsn_release("utils.py")
    rng = np.random.default_rng(0)
    noisy = rng.uniform(0, 1, (2, 6, 7, 3)).astype(np.float32)
    targets = rng.uniform(0, 1, (5, 2, 6, 7, 3)).astype(np.float32)
    drawn = rng.integers(0, 5, (2, 6, 7))
    monkeypatch.setattr(utils.torch, "randint", lambda *args, **kwargs: torch.from_numpy(drawn))
    nchw = [torch.from_numpy(t.transpose(0, 3, 1, 2).copy()) for t in targets]
    theirs = utils.Recharger().apply(torch.from_numpy(noisy.transpose(0, 3, 1, 2).copy()), nchw)
    ours = np.asarray(mix(jnp.asarray(drawn), jnp.asarray(noisy), jnp.asarray(targets)))
    for k, t in enumerate(theirs):
        np.testing.assert_array_equal(t.numpy().transpose(0, 2, 3, 1), ours[k])
