"""SIDD benchmark submissions (ambsn_jax.evaluation.submission): written, checked before upload."""

from __future__ import annotations

import base64
import csv
from pathlib import Path

import numpy as np
import pytest
import scipy.io

from ambsn_jax.data.sidd import save_blocks_mat
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation.submission import MAT_VARIABLE, read_submission, write_submission
from ambsn_jax.inference.release import postprocess
from tests.helpers import RELEASE, SIDD_SHAPE, bound, evaluate, keys, no_temp_files, sidd_blocks

FAST = ["--no-tta", "--no-r3"]


def _decode_csv(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "BLOCK"]
    assert [int(r[0]) for r in rows[1:]] == list(range(shape[0] * shape[1]))
    data = [np.frombuffer(base64.b64decode(r[1]), np.uint8).reshape(shape[2:]) for r in rows[1:]]
    return np.stack(data).reshape(shape)


def test_submissions_round_trip_and_pass_the_check(bench_dir, ckpt, model, capsys, tmp_path):
    for name in ("sub.csv", "sub.mat"):
        code, out, err = evaluate(["--ckpt", ckpt, "--sidd-bench", bench_dir, "--submission", tmp_path / name, *FAST], capsys)
        assert code == 0, err
        assert out == f"wrote {tmp_path / name}: 4 blocks (0 of 1 calls reused from an earlier run; --overwrite redoes them)\n"
    from_csv = _decode_csv(tmp_path / "sub.csv", SIDD_SHAPE)
    from_mat = scipy.io.loadmat(tmp_path / "sub.mat")[MAT_VARIABLE]
    assert from_mat.dtype == np.uint8
    np.testing.assert_array_equal(from_csv, from_mat)
    # And they hold the denoised blocks, image-major, rounded as the release rounds.
    noisy = sidd_blocks(1)[0].reshape(-1, *SIDD_SHAPE[2:]).astype(np.float32)
    cfg = RELEASE.__class__(pd_a=5, pd_pad=2, tta=False, r3=False)
    direct = bound(model, cfg)(noisy, keys(len(noisy)))
    np.testing.assert_array_equal(from_csv.reshape(noisy.shape), np.asarray(postprocess(direct)))
    assert no_temp_files(tmp_path)

    for name in ("sub.csv", "sub.mat"):
        code, out, err = evaluate(["--check-submission", tmp_path / name, "--sidd-bench", bench_dir], capsys)
        assert code == 0 and out == f"ok: {tmp_path / name} holds the 4 blocks of 20x16x3 uint8\n" and err == ""


def test_write_and_read_back_in_both_formats(tmp_path):
    blocks = sidd_blocks(2)[0]
    for name in ("s.csv", "s.MAT"):
        write_submission(tmp_path / name, blocks)
        np.testing.assert_array_equal(read_submission(tmp_path / name, blocks.shape), blocks)
    with pytest.raises(UserError, match=r"s.txt: a submission is a .csv \(Kaggle\) or a .mat file"):
        write_submission(tmp_path / "s.txt", blocks)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.MAT", "s.csv"]


def _rows(blocks: np.ndarray) -> list[list[str]]:
    flat = blocks.reshape(-1, *blocks.shape[2:])
    return [[str(n), base64.b64encode(b.tobytes()).decode()] for n, b in enumerate(flat)]


def _bad_csv(rows: list[list[str]], case: str) -> list[list[str]]:
    if case == "missing row":
        return rows[:-1]
    if case == "extra row":
        return [*rows, [str(len(rows)), rows[0][1]]]
    if case == "duplicate id":
        return [rows[0], [rows[0][0], rows[1][1]], *rows[2:]]
    if case == "non-numeric id":
        return [["first", rows[0][1]], *rows[1:]]
    if case == "short block":
        return [[rows[0][0], base64.b64encode(b"\0" * 10).decode()], *rows[1:]]
    if case == "not base64":
        return [[rows[0][0], "@@@@"], *rows[1:]]
    raise AssertionError(case)


BAD_CSV = {
    "missing row": "3 rows, the benchmark has 4 blocks",
    "extra row": "ID '4' is not a new ID in 0..3",
    "duplicate id": "ID '0' is not a new ID",
    "non-numeric id": "ID 'first'",
    "short block": "ID 0: BLOCK decodes to 10 bytes, not 960 (20x16x3 uint8)",
    "not base64": "ID 0: BLOCK is not base64",
}


@pytest.mark.parametrize("case", sorted(BAD_CSV))
def test_check_submission_rejects_bad_csv(bench_dir, capsys, tmp_path, case):
    good = tmp_path / "good.csv"
    write_submission(good, sidd_blocks(1)[0])
    assert evaluate(["--check-submission", good, "--sidd-bench", bench_dir], capsys)[0] == 0
    with open(good, newline="") as f:
        rows = list(csv.reader(f))[1:]
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["ID", "BLOCK"], *_bad_csv(rows, case)])
    code, out, err = evaluate(["--check-submission", bad, "--sidd-bench", bench_dir], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {bad}: ") and BAD_CSV[case] in err


def test_check_submission_rejects_bad_header_mat_shape_and_suffix(bench_dir, capsys, tmp_path):
    header = tmp_path / "header.csv"
    header.write_text("Id,Block\n")
    small = tmp_path / "small.mat"
    save_blocks_mat(small, sidd_blocks(1)[0][:1], MAT_VARIABLE)
    other = tmp_path / "sub.txt"
    other.write_text("")
    for path, message in [
        (header, "header is ['Id', 'Block'], not ['ID', 'BLOCK']"),
        (small, "holds blocks (1, 2, 20, 16, 3), the benchmark has (2, 2, 20, 16, 3)"),
        (other, "a submission is a .csv (Kaggle) or a .mat file"),
        (tmp_path / "absent.csv", "no such file"),
    ]:
        code, out, err = evaluate(["--check-submission", path, "--sidd-bench", bench_dir], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err
