"""Files and folders published whole or not at all, and their digests."""

from __future__ import annotations

import hashlib
import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from ambsn_jax.errors import UserError


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_tree(path: str | Path) -> str:
    """sha256 of a file, or of a folder: every file's relative path and bytes, sorted."""
    path = Path(path)
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        # The name goes in too, so that moving bytes between files changes the digest.
        digest.update(file.relative_to(path).as_posix().encode() + b"\0")
        digest.update(sha256_file(file).encode())
    return digest.hexdigest()


def _temporary_sibling(path: Path) -> Path:
    # Beside the target, so that the final rename stays on one file system and is atomic.
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp")


def _remove(path: Path) -> None:
    # exists() rather than unlink(missing_ok=True): the latter raises when the folder is not one.
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """A temporary name beside `path` to write a file to; renamed onto `path` once the block succeeds.

    An interrupted run thus leaves either the complete file or none, never half of one.
    """
    path = Path(path)
    tmp = _temporary_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        yield tmp
        os.replace(tmp, path)
    except OSError as e:
        raise UserError(f"{path}: cannot write it ({e.strerror or e}); pick a writable location") from e
    finally:
        _remove(tmp)


@contextmanager
def atomic_dir(path: str | Path, replace: bool = False) -> Iterator[Path]:
    """A fresh temporary folder beside `path` to fill; renamed onto `path` once the block succeeds.

    If the block fails, nothing new is left at `path`. An existing `path` is replaced only when
    `replace` (the caller has checked that it may be): it is moved aside first and put back if
    the swap fails, so `path` holds the old folder or the new one, never neither. Without
    `replace`, a folder another process published first is kept and ours dropped (callers
    publish deterministic content).
    """
    path = Path(path)
    tmp = _temporary_sibling(path)
    old = _temporary_sibling(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        yield tmp
        if replace and path.exists():
            os.replace(path, old)
            try:
                os.replace(tmp, path)
            except OSError:
                os.replace(old, path)
                raise
        else:
            try:
                tmp.rename(path)
            except OSError:
                if not path.is_dir():
                    raise
    except OSError as e:
        raise UserError(f"{path}: cannot write it ({e.strerror or e}); pick a writable location") from e
    finally:
        _remove(tmp)
        _remove(old)
