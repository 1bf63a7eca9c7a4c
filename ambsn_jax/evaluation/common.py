"""What every evaluation mode shares: per-item random keys and checkpoint digests."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path

import jax

from ambsn_jax.files import sha256_file
from ambsn_jax.inference import fold_in_each


def item_keys(seed: int, indices: Sequence[int]) -> jax.Array:
    """One key per item: the seed's key folded with the item's index.

    An item's R3 draws thus depend only on the seed and its own index (block number in the
    file, position in the sorted file list, box number), never on the batch size or `--limit`.
    """
    return fold_in_each(jax.random.key(seed), indices)


def checkpoint_sha256(path: str | Path) -> str:
    """sha256 of a .pth file, or of an Orbax directory: every file's relative path and bytes, sorted."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        # The name goes in too, so that moving bytes between files changes the digest.
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()
