"""Files published whole or not at all, and their digests (ambsn_jax.files)."""

from __future__ import annotations

import hashlib
import shutil

import pytest

from ambsn_jax.errors import UserError
from ambsn_jax.files import atomic_dir, atomic_path, sha256_file, sha256_tree


def test_sha256_of_a_file_and_of_a_folder(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "x.bin").write_bytes(b"abc")
    (tmp_path / "a" / "sub").mkdir()
    (tmp_path / "a" / "sub" / "y").write_bytes(b"de")
    assert sha256_file(tmp_path / "a" / "x.bin") == hashlib.sha256(b"abc").hexdigest()
    assert sha256_tree(tmp_path / "a" / "x.bin") == hashlib.sha256(b"abc").hexdigest()
    digest = hashlib.sha256()
    for name, data in (("sub/y", b"de"), ("x.bin", b"abc")):
        digest.update(name.encode() + b"\0")
        digest.update(hashlib.sha256(data).hexdigest().encode())
    assert sha256_tree(tmp_path / "a") == digest.hexdigest()


def test_folder_digest_follows_contents_not_location(ckpt, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    assert sha256_tree(copy) == sha256_tree(ckpt)
    some_file = next(p for p in sorted(copy.rglob("*")) if p.is_file())
    some_file.write_bytes(some_file.read_bytes() + b"\0")
    assert sha256_tree(copy) != sha256_tree(ckpt)
    # Moving bytes from one file's name to another's changes it too.
    (tmp_path / "m").mkdir()
    (tmp_path / "m" / "a").write_bytes(b"1")
    before = sha256_tree(tmp_path / "m")
    (tmp_path / "m" / "a").rename(tmp_path / "m" / "b")
    assert sha256_tree(tmp_path / "m") != before


def test_interrupted_write_leaves_no_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    with atomic_path(tmp_path / "report.json") as tmp:
        tmp.write_text("{}")
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"] and (tmp_path / "report.json").read_text() == "{}"
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="below_a_file.json: cannot write it"):
        with atomic_path(tmp_path / "file" / "below_a_file.json") as tmp:
            tmp.write_text("x")


def test_atomic_dir_publishes_whole_or_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "half").write_text("x")
            raise RuntimeError
    assert list(tmp_path.iterdir()) == []
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "one").write_text("1")
    # Without `replace`, a folder published first is kept; with it, replaced.
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "two").write_text("2")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["one"]
    with atomic_dir(tmp_path / "out", replace=True) as tmp:
        (tmp / "two").write_text("2")
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["two"]
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
