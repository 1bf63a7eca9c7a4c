"""SIDD benchmark submissions: the Kaggle CSV or a .mat, written atomically and checked before upload.

CSV: header `ID,BLOCK`, one row per block, IDs 0..N-1 image-major, BLOCK the base64 of the
block's raw uint8 RGB bytes in C order (H, W, 3). .mat: one uint8 array shaped like the
benchmark's blocks, as variable `DenoisedBlocksSrgb`.
"""

from __future__ import annotations

import base64
import binascii
import csv
from pathlib import Path

import numpy as np

from ambsn_jax.data.sidd import load_blocks, save_blocks_mat
from ambsn_jax.errors import UserError
from ambsn_jax.files import atomic_path

MAT_VARIABLE = "DenoisedBlocksSrgb"
SUFFIXES = (".csv", ".mat")
_HEADER = ["ID", "BLOCK"]
# A 256x256 block is ~262k base64 characters, above the csv module's default field limit.
csv.field_size_limit(2**31 - 1)


def check_suffix(path: str | Path) -> str:
    """'.csv' or '.mat', the submission format that `path` names; UserError for anything else."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise UserError(f"{path}: a submission is a .csv (Kaggle) or a .mat file; name it so")
    return path.suffix.lower()


def write_submission(path: str | Path, blocks: np.ndarray) -> None:
    """Writes uint8 blocks (images, blocks, H, W, 3) as the CSV or .mat that `path` names."""
    path = Path(path)
    suffix = check_suffix(path)
    with atomic_path(path) as tmp:
        if suffix == ".mat":
            save_blocks_mat(tmp, blocks, MAT_VARIABLE)
            return
        with open(tmp, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(_HEADER)
            for n, block in enumerate(blocks.reshape(-1, *blocks.shape[2:])):
                writer.writerow([n, base64.b64encode(np.ascontiguousarray(block).tobytes()).decode("ascii")])


def _decode_row(
    row: list[str], count: int, block_shape: tuple[int, ...], seen: set[int]
) -> tuple[int, bytes] | str:
    """(ID, block bytes) of one CSV row, or what is wrong with it."""
    if len(row) != 2 or not row[0].isdigit() or int(row[0]) >= count or int(row[0]) in seen:
        return f"ID {row[0] if row else ''!r} is not a new ID in 0..{count - 1}"
    n = int(row[0])
    try:
        data = base64.b64decode(row[1], validate=True)
    except binascii.Error:
        return f"ID {n}: BLOCK is not base64"
    size = int(np.prod(block_shape))
    if len(data) != size:
        block = "x".join(map(str, block_shape))
        return f"ID {n}: BLOCK decodes to {len(data)} bytes, not {size} ({block} uint8)"
    return n, data


def _read_csv(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    count, block_shape = int(np.prod(shape[:2])), shape[2:]
    out = np.zeros((count, *block_shape), np.uint8)
    seen: set[int] = set()
    problems = []
    with open(path, newline="") as f:
        rows = csv.reader(f)
        header = next(rows, None)
        if header != _HEADER:
            raise UserError(f"{path}: header is {header}, not {_HEADER}; write it with --submission")
        rows_read = 0
        for rows_read, row in enumerate(rows, start=1):
            decoded = _decode_row(row, count, block_shape, seen)
            if isinstance(decoded, str):
                problems.append(decoded)
                continue
            n, data = decoded
            seen.add(n)
            out[n] = np.frombuffer(data, np.uint8).reshape(block_shape)
    if rows_read != count:
        problems.insert(0, f"{rows_read} rows, the benchmark has {count} blocks")
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise UserError(f"{path}: {'; '.join(problems[:3])}{more}")
    return out.reshape(shape)


def read_submission(path: str | Path, shape: tuple[int, ...]) -> np.ndarray:
    """A submission's blocks as uint8 `shape` (images, blocks, H, W, 3); UserError saying what is wrong."""
    path = Path(path)
    suffix = check_suffix(path)
    if not path.is_file():
        raise UserError(f"{path}: no such file; pass the submission to check")
    if suffix == ".csv":
        return _read_csv(path, tuple(shape))
    blocks = load_blocks(path)
    if blocks.shape != tuple(shape):
        raise UserError(f"{path}: holds blocks {blocks.shape}, the benchmark has {tuple(shape)}")
    return blocks
