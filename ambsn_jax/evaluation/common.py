"""What every evaluation mode shares: how reports name a checkpoint."""

from __future__ import annotations

from typing import Any

from ambsn_jax.checkpoint.store import Checkpoint
from ambsn_jax.files import sha256_tree


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
