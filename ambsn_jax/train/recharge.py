"""The TM-BSN release's "Recharger" (its `train_distill.py --recharge`): distillation targets
mixed with the noisy input (docs/nbsn.md, "Distillation").

The release distils into NBSN from K teacher outputs at once (its hole sizes 2..6), the loss a
sum of L1 to each. With the Recharger, every pixel of the batch draws one of the K targets
uniformly, and that target takes the noisy input's value there (all channels); the other K - 1
keep the teacher's. So each pixel's loss holds one noisy term beside K - 1 teacher terms, which
keeps the student from inheriting the teacher's blind-spot bias alone. The release's
`percentage` stays at 1 in its script (every drawn pixel is replaced), as here.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def mix(drawn: jax.Array, noisy: jax.Array, targets: jax.Array) -> jax.Array:
    """`targets` (K, N, H, W, C) with target `drawn[n, h, w]` (N, H, W ints in 0..K-1) replaced
    by `noisy` (N, H, W, C) at every pixel (n, h, w)."""
    k = targets.shape[0]
    chosen = (jnp.arange(k)[:, None, None, None] == drawn[None])[..., None]
    return jnp.where(chosen, noisy[None], targets)


def recharge(key: jax.Array, noisy: jax.Array, targets: jax.Array) -> jax.Array:
    """`mix` with each pixel's target drawn uniformly from `key`."""
    k, n, h, w = targets.shape[:4]
    return mix(jax.random.randint(key, (n, h, w), 0, k), noisy, targets)


def recharge_batch(key: jax.Array, batch: jax.Array) -> jax.Array:
    """A distillation batch (N, H, W, 3 + 3K: the noisy crops, then K targets) with its targets
    recharged, in the same layout."""
    n, h, w, c = batch.shape
    noisy, targets = batch[..., :3], batch[..., 3:]
    stacked = jnp.moveaxis(targets.reshape(n, h, w, (c - 3) // 3, 3), 3, 0)
    mixed = recharge(key, noisy, stacked)
    return jnp.concatenate([noisy, jnp.moveaxis(mixed, 0, 3).reshape(n, h, w, c - 3)], axis=-1)
