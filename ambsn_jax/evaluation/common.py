"""What every evaluation mode shares: per-item random keys, atomic output files, checkpoint digests."""

from __future__ import annotations

import hashlib
import os
import secrets
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp

from ambsn_jax.errors import UserError
from ambsn_jax.torch_port import sha256_file


def item_keys(seed: int, indices: Sequence[int]) -> jax.Array:
    """One key per item: the seed's key folded with the item's index.

    An item's R3 draws thus depend only on the seed and its own index (block number in the
    file, position in the sorted file list, box number), never on the batch size or `--limit`.
    """
    return jax.vmap(partial(jax.random.fold_in, jax.random.key(seed)))(jnp.asarray(indices, jnp.uint32))


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` to write to; renamed onto `path` once the block succeeds.

    An interrupted run thus leaves either the complete file or none, never half of one.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: cannot write it ({e.strerror or e}); pick a writable location") from e
    finally:
        # exists() rather than unlink(missing_ok=True): the latter raises when the folder is not one.
        if tmp.exists():
            tmp.unlink()


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
