"""Per-item random keys: what makes an item's R3 draws its own, whatever batch it is in."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np


# One compiled program per count of indices, rather than one per op of the vmapped fold_in.
_fold_in_each = jax.jit(jax.vmap(jax.random.fold_in, (None, 0)))


def fold_in_each(key: jax.Array, indices: Sequence[int] | np.ndarray) -> jax.Array:
    """One key per index i: `fold_in(key, i)`, so an item's draws depend on its index alone."""
    return _fold_in_each(key, np.asarray(indices, np.uint32))


def item_keys(seed: int, indices: Sequence[int]) -> jax.Array:
    """One key per item: the seed's key folded with the item's index.

    An item's R3 draws thus depend only on the seed and its own index (block number in the
    file, position in the sorted file list, box number, tile of an image), never on the batch
    size, `--limit` or the number of devices.
    """
    return fold_in_each(jax.random.key(seed), indices)
