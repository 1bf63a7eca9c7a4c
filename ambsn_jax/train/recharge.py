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


def recharge(key: jax.Array, noisy: jax.Array, targets: jax.Array) -> jax.Array:
    """`targets` (K, N, H, W, C) with, at every pixel (n, h, w), one target drawn uniformly from
    `key` replaced by `noisy` (N, H, W, C) there."""
    k, n, h, w = targets.shape[:4]
    drawn = jax.random.randint(key, (n, h, w), 0, k)
    chosen = (jnp.arange(k)[:, None, None, None] == drawn[None])[..., None]
    return jnp.where(chosen, noisy[None], targets)
