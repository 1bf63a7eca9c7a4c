"""The release's Recharger (ambsn_jax.train.recharge): one target per pixel takes the noisy
value, all channels, the others stay; the draw is uniform over the targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ambsn_jax.train.recharge import recharge


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
