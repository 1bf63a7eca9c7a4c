"""What every evaluation mode shares: per-item random keys, and how reports name a checkpoint."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax

from ambsn_jax.checkpoint.store import Checkpoint
from ambsn_jax.files import sha256_tree
from ambsn_jax.inference.denoiser import fold_in_each


def item_keys(seed: int, indices: Sequence[int]) -> jax.Array:
    """One key per item: the seed's key folded with the item's index.

    An item's R3 draws thus depend only on the seed and its own index (block number in the
    file, position in the sorted file list, box number), never on the batch size or `--limit`.
    """
    return fold_in_each(jax.random.key(seed), indices)


def checkpoint_record(checkpoint: Checkpoint) -> dict[str, Any]:
    """What a report says of the weights: where they are, their digest, which network.

    The digest covers the step directory read (or the .pth file), not a whole training workdir.
    """
    read = checkpoint.path if checkpoint.step is None else checkpoint.path / str(checkpoint.step)
    return {
        "path": str(checkpoint.path),
        "step": checkpoint.step,
        "sha256": sha256_tree(read),
        "arch": checkpoint.meta.arch,
        "config": checkpoint.meta.config,
        "train_pd": checkpoint.meta.train_pd,
        "source": checkpoint.meta.source,
    }
