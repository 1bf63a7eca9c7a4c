"""Evaluations that resume (ambsn_jax.evaluation.resume): the manifests, and --input, --dnd and
--sidd-bench rerun after an interruption, redoing only what is missing, the same bytes."""

from __future__ import annotations

import shutil

import numpy as np
import scipy.io

from ambsn_jax.evaluation import resume as resumelib
from ambsn_jax.evaluation.resume import PartialBlocks, Resume, fingerprint
from tests.helpers import evaluate, fake_dnd, write_png

FAST = ["--no-tta", "--no-r3"]


def test_manifests_per_process_are_read_by_all_and_checked(tmp_path):
    out, src = tmp_path / "out", tmp_path / "a.png"
    src.write_bytes(b"input")
    options = {"sha": "x", "seed": 0, "size": (2, 3)}
    for process, name in [(0, "a.png"), (1, "b.png")]:
        r = Resume(out, options, overwrite=False, process=process)
        (out / name).write_bytes(b"output " + name.encode())
        r.record(name, fingerprint(process, src))
        r.close()
    assert sorted(p.name for p in out.glob(".ambsn-evaluate.*")) == [".ambsn-evaluate.0.jsonl", ".ambsn-evaluate.1.jsonl"]
    # A rerun as one process reuses both processes' outputs.
    again = Resume(out, options, overwrite=False, process=0)
    assert again.finished("a.png", fingerprint(0, src)) and again.finished("b.png", fingerprint(1, src))
    assert not again.finished("b.png", fingerprint(2, src))  # another item index
    assert again.reused == 2
    # An output rewritten since (another run's) is not ours; a cut line is ignored.
    (out / "a.png").write_bytes(b"someone else's, longer")
    with (out / ".ambsn-evaluate.1.jsonl").open("a") as f:
        f.write('{"name": "c.png", "ite')
    again = Resume(out, options, overwrite=False, process=0)
    assert not again.finished("a.png", fingerprint(0, src)) and again.finished("b.png", fingerprint(1, src))
    assert not Resume(out, {**options, "seed": 1}, overwrite=False, process=0).finished("b.png", fingerprint(1, src))
    assert not Resume(out, options, overwrite=True, process=0).finished("b.png", fingerprint(1, src))


def test_a_folder_rerun_redoes_only_what_is_missing(ckpt, tmp_path, capsys):
    src = tmp_path / "in"
    for i in range(3):
        write_png(src / f"img{i}.png", (18, 22, 3), seed=i)
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    base = ["--ckpt", ckpt, "--input", src, *FAST]
    code, out, err = evaluate([*base, "--output", whole], capsys)
    assert code == 0 and "wrote 3 of 3 images" in out and "(0 reused" in out, err
    want = {p.name: p.read_bytes() for p in whole.glob("*.png")}
    # What a kill after two images leaves: their files and the manifest listing them.
    shutil.copytree(whole, resumed, copy_function=shutil.copy2)
    (resumed / "img2.png").unlink()
    code, out, err = evaluate([*base, "--output", resumed], capsys)
    assert code == 0 and "wrote 3 of 3 images" in out and "(2 reused" in out, err
    assert {p.name: p.read_bytes() for p in resumed.glob("*.png")} == want
    assert "(3 reused" in evaluate([*base, "--output", resumed], capsys)[1]
    assert "(0 reused" in evaluate([*base, "--output", resumed, "--overwrite"], capsys)[1]
    assert "(0 reused" in evaluate([*base, "--output", resumed, "--seed", "1"], capsys)[1]
    code, out, err = evaluate(["--ckpt", ckpt, "--overwrite"], capsys)
    assert code == 2 and "--overwrite applies to --input, --dnd and --sidd-bench only" in err


def test_a_dnd_rerun_redoes_only_the_missing_boxes(ckpt, tmp_path, capsys):
    rng = np.random.default_rng(0)
    fake_dnd(tmp_path / "dnd", [rng.uniform(0, 1, (24, 26, 3)) for _ in range(2)],
              [[[3, 5, 18, 20], [1, 1, 16, 16]], [[5, 2, 20, 17]]])  # fmt: skip
    out = tmp_path / "sub"
    argv = ["--ckpt", ckpt, "--dnd", tmp_path / "dnd", "--submission-dir", out, *FAST]
    code, stdout, err = evaluate(argv, capsys)
    assert code == 0 and "wrote 3 boxes" in stdout and "(0 reused" in stdout, err
    want = {p.name: scipy.io.loadmat(p)["Idenoised_crop"] for p in out.glob("*.mat")}
    bundled = scipy.io.loadmat(out / "bundled" / "0001.mat")["Idenoised"]
    (out / "0001_02.mat").unlink()
    (out / "bundled" / "0001.mat").unlink()
    code, stdout, err = evaluate(argv, capsys)
    assert code == 0 and "(2 reused" in stdout, err
    for name, crop in want.items():
        np.testing.assert_array_equal(scipy.io.loadmat(out / name)["Idenoised_crop"], crop)
    again = scipy.io.loadmat(out / "bundled" / "0001.mat")["Idenoised"]
    for k in range(2):
        np.testing.assert_array_equal(again[0, k], bundled[0, k])


def test_a_sidd_benchmark_rerun_reuses_the_finished_calls_and_writes_the_same_file(bench_dir, ckpt, tmp_path, capsys, monkeypatch):
    argv = ["--ckpt", ckpt, "--sidd-bench", bench_dir, "--batch", "1", *FAST]
    code, out, err = evaluate([*argv, "--submission", tmp_path / "whole.csv"], capsys)
    assert code == 0 and "(0 of 4 calls reused" in out, err
    want = (tmp_path / "whole.csv").read_bytes()
    assert not (tmp_path / "whole.csv.partial").exists()

    # Interrupted (Ctrl-C) after two calls were kept.
    real_save, saved = PartialBlocks.save, []

    def save_then_stop(self, start, blocks):
        if len(saved) == 2:
            raise KeyboardInterrupt
        real_save(self, start, blocks)
        saved.append(start)

    monkeypatch.setattr(PartialBlocks, "save", save_then_stop)
    code, out, err = evaluate([*argv, "--submission", tmp_path / "s.csv"], capsys)
    assert code == 130 and not (tmp_path / "s.csv").exists()
    assert sorted(p.name for p in (tmp_path / "s.csv.partial").glob("*.npy")) == ["000000000.npy", "000000001.npy"]
    monkeypatch.setattr(PartialBlocks, "save", real_save)
    code, out, err = evaluate([*argv, "--submission", tmp_path / "s.csv"], capsys)
    assert code == 0 and "(2 of 4 calls reused" in out, err
    assert (tmp_path / "s.csv").read_bytes() == want
    assert not (tmp_path / "s.csv.partial").exists()
    # Other options: nothing is reused.
    (tmp_path / "s.csv.partial").mkdir()
    code, out, err = evaluate([*argv, "--submission", tmp_path / "s.csv", "--seed", "2"], capsys)
    assert code == 0 and "(0 of 4 calls reused" in out
    assert resumelib.PREFIX.startswith(".")
