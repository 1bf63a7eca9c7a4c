"""Tests of evaluate.py: SIDD scores, submissions, image folders, DND, and every error path.

Everything runs on tiny synthetic SIDD-format files (2 images x 2 blocks of 20 x 16) and
networks of width 8, through `main(argv)` in-process; one test runs the real script.
"""

from __future__ import annotations

import base64
import csv
import hashlib
import json
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import cv2
import h5py
import jax
import numpy as np
import pytest
import scipy.io
import torch
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ambsn_jax import checkpoint, torch_port
from ambsn_jax.data.images import read_image
from ambsn_jax.data.sidd import load_blocks, save_blocks_mat, save_blocks_mat73
from ambsn_jax.errors import UserError
from ambsn_jax.evaluation import cli
from ambsn_jax.evaluation.common import checkpoint_sha256
from ambsn_jax.files import atomic_path
from ambsn_jax.evaluation.sidd import BENCHMARK_NOISY, VALIDATION_CLEAN, VALIDATION_NOISY
from ambsn_jax.evaluation.submission import MAT_VARIABLE, write_submission
from ambsn_jax.inference import Denoiser, InferenceConfig, denoise_image, postprocess
from ambsn_jax.metrics import psnr, ssim
from ambsn_jax.model import AMBSN
from convert.reference import Denoiser as ReferenceDenoiser

REPO = Path(__file__).resolve().parent.parent
SHAPE = (2, 2, 20, 16, 3)  # images, blocks, H, W, RGB: non-square catches swapped axes
FAST = ["--no-tta", "--no-r3"]  # cheapest compilation, where the inference itself is not the point


# --- fixtures -----------------------------------------------------------------------------


def _blocks(seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(noisy, clean) uint8 blocks: smooth gradients, plus Gaussian noise of sigma 20."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: SHAPE[2], : SHAPE[3]]
    base = 60 + 6 * yy[..., None] + 4 * xx[..., None] + rng.uniform(0, 40, (*SHAPE[:2], 1, 1, 3))
    clean = np.clip(base, 0, 255).astype(np.uint8)
    noisy = np.clip(clean + rng.normal(0, 20, SHAPE), 0, 255).astype(np.uint8)
    return noisy, clean


@pytest.fixture(scope="module")
def val_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sidd_val")
    noisy, clean = _blocks(0)
    save_blocks_mat(root / VALIDATION_NOISY, noisy, "ValidationNoisyBlocksSrgb")
    save_blocks_mat(root / VALIDATION_CLEAN, clean, "ValidationGtBlocksSrgb")
    return root


@pytest.fixture(scope="module")
def bench_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("sidd_bench")
    save_blocks_mat(root / BENCHMARK_NOISY, _blocks(1)[0], "BenchmarkNoisyBlocksSrgb")
    return root


@pytest.fixture(scope="module")
def scaled_state_dict(official_state_dict) -> dict[str, torch.Tensor]:
    """A random width-8 reference network with outputs around 128 +- 30 rather than ~0.3, so
    that rounding, channel order and both metrics see real values (~0.3 all rounds to 0)."""
    sd = {k: v.clone() for k, v in official_state_dict(8).items()}
    sd["bsn.tail.6.weight"] *= 100.0
    sd["bsn.tail.6.bias"] += 128.0
    return sd


@pytest.fixture(scope="module")
def model(scaled_state_dict) -> AMBSN:
    return torch_port.model_from_state_dict({k: v.numpy() for k, v in scaled_state_dict.items()})


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, model) -> Path:
    """The scaled network as an Orbax checkpoint."""
    path = tmp_path_factory.mktemp("ckpt") / "orbax"
    checkpoint.save_params(path, model, checkpoint.model_meta(model))
    return path


@pytest.fixture(scope="module")
def pth(tmp_path_factory, scaled_state_dict) -> Path:
    path = tmp_path_factory.mktemp("pth") / "release.pth"
    torch.save({"epoch": 1, "model_weight": {"denoiser": scaled_state_dict}}, path)
    return path


def run(argv: list, capsys) -> tuple[int, str, str]:
    """main(argv) in-process: (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def report(argv: list, capsys, tmp_path: Path, name: str = "report.json") -> dict:
    code, out, err = run([*argv, "--json", tmp_path / name], capsys)
    assert code == 0, err
    return json.loads((tmp_path / name).read_text())


def block_numbers(rep: dict) -> np.ndarray:
    return np.array([[b["psnr"], b["ssim"]] for b in rep["blocks"]])


def no_temp_files(root: Path) -> bool:
    return not list(root.rglob("*.tmp"))


# --- metrics ------------------------------------------------------------------------------


def test_metrics_equal_skimage_on_float32():
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (24, 20, 3)).astype(np.float32)
    test = clean + rng.normal(0, 30, clean.shape).astype(np.float32)  # leaves 0..255: clipped
    clipped = np.clip(test, 0, 255)
    assert psnr(clean, test) == peak_signal_noise_ratio(clean, clipped, data_range=255)
    assert ssim(clean, test) == structural_similarity(clean, clipped, channel_axis=2, data_range=255)
    # uint8 clean against a float result: scored as float32 like the release, without
    # skimage's mismatched-dtype warning.
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert ssim(clean.astype(np.uint8), test) == ssim(clean, test)
        assert psnr(clean.astype(np.uint8), test) == psnr(clean, test)


# --- SIDD validation ----------------------------------------------------------------------


def test_validation_equals_the_pytorch_reference_pipeline(val_dir, pth, scaled_state_dict, capsys, tmp_path):
    rep = report(["--ckpt", pth, "--sidd-val", val_dir, "--no-r3", "--batch", 3], capsys, tmp_path)

    ref = ReferenceDenoiser(base_ch=8, R3=False).eval()
    ref.load_state_dict(scaled_state_dict)
    noisy, clean = _blocks(0)
    flat_noisy, flat_clean = noisy.reshape(-1, *SHAPE[2:]), clean.reshape(-1, *SHAPE[2:])
    x = torch.from_numpy(flat_noisy.astype(np.float32)).permute(0, 3, 1, 2)
    want = np.clip(np.floor(ref.denoise(x).permute(0, 2, 3, 1).numpy() + 0.5), 0, 255)
    assert 100 < want.mean() < 160 and want.std() > 5  # the metrics see real values
    expect = [
        (
            peak_signal_noise_ratio(c.astype(np.float32), d, data_range=255),
            structural_similarity(c.astype(np.float32), d, channel_axis=2, data_range=255),
        )
        for c, d in zip(flat_clean, want)
    ]
    got = block_numbers(rep)
    assert np.abs(got[:, 0] - [e[0] for e in expect]).max() <= 1e-3
    assert np.abs(got[:, 1] - [e[1] for e in expect]).max() <= 1e-4

    assert [(b["image"], b["block"]) for b in rep["blocks"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert rep["psnr"] == pytest.approx(got[:, 0].mean()) and rep["ssim"] == pytest.approx(got[:, 1].mean())
    assert rep["noisy_psnr"] == pytest.approx(np.mean([psnr(c, n) for c, n in zip(flat_clean, flat_noisy)]))
    assert rep["noisy_ssim"] == pytest.approx(np.mean([ssim(c, n) for c, n in zip(flat_clean, flat_noisy)]))
    assert rep["options"] == {
        "dataset": str(val_dir), "seed": 0, "batch": 3, "limit": None,
        "self_ensemble": False, "bf16": False, "tta": True, "r3": False,
    }  # fmt: skip
    assert rep["checkpoint"] == {"path": str(pth), "sha256": hashlib.sha256(pth.read_bytes()).hexdigest()}
    assert set(rep["timing"]) == {"compile_s", "per_block_s", "total_s"}
    assert 0 < rep["timing"]["per_block_s"] and rep["timing"]["compile_s"] < rep["timing"]["total_s"]


def test_r3_numbers_depend_on_the_seed_only(val_dir, ckpt, capsys, tmp_path):
    # R3 on (TTA off to keep compilation short): the draws follow the seed and the block number,
    # not the batch size or --limit.
    base = ["--ckpt", ckpt, "--sidd-val", val_dir, "--no-tta"]
    first = block_numbers(report([*base, "--seed", 1, "--batch", 4], capsys, tmp_path, "a.json"))
    again = block_numbers(report([*base, "--seed", 1, "--batch", 3], capsys, tmp_path, "b.json"))
    limited = block_numbers(report([*base, "--seed", 1, "--batch", 1, "--limit", 2], capsys, tmp_path, "c.json"))
    other = block_numbers(report([*base, "--seed", 2, "--batch", 4], capsys, tmp_path, "d.json"))
    np.testing.assert_allclose(again, first, rtol=0, atol=1e-9)
    np.testing.assert_allclose(limited, first[:2], rtol=0, atol=1e-9)
    assert np.all(other[:, 1] != first[:, 1])


def test_inference_switches_reach_the_denoiser(val_dir, ckpt, model, capsys, tmp_path):
    rep = report(["--ckpt", ckpt, "--sidd-val", val_dir, *FAST, "--self-ensemble", "--bf16"], capsys, tmp_path)
    noisy, clean = (b.reshape(-1, *SHAPE[2:]) for b in _blocks(0))
    cfg = InferenceConfig(tta=False, r3=False, self_ensemble=True, bf16=True)
    keys = jax.random.split(jax.random.key(0), len(noisy))
    out = np.asarray(postprocess(Denoiser(model, cfg)(noisy.astype(np.float32), keys)))
    np.testing.assert_allclose(block_numbers(rep)[:, 0], [psnr(c, o) for c, o in zip(clean, out)], rtol=0, atol=1e-9)
    assert rep["options"]["self_ensemble"] and rep["options"]["bf16"]
    assert not rep["options"]["tta"] and not rep["options"]["r3"]


def test_matlab_v73_files_score_as_v5(val_dir, ckpt, capsys, tmp_path):
    v73 = tmp_path / "v73"
    v73.mkdir()
    for name in (VALIDATION_NOISY, VALIDATION_CLEAN):
        save_blocks_mat73(v73 / name, load_blocks(val_dir / name), Path(name).stem)
    v5_numbers = block_numbers(report(["--ckpt", ckpt, "--sidd-val", val_dir, *FAST], capsys, tmp_path, "a.json"))
    v73_numbers = block_numbers(report(["--ckpt", ckpt, "--sidd-val", v73, *FAST], capsys, tmp_path, "b.json"))
    np.testing.assert_array_equal(v73_numbers, v5_numbers)


def test_no_dataset_option_runs_on_the_demo_set(val_dir, ckpt, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "demo_root", lambda: val_dir)
    rep = report(["--ckpt", ckpt, *FAST, "--limit", 1], capsys, tmp_path)
    assert rep["options"]["dataset"] == str(val_dir) and len(rep["blocks"]) == 1


def test_default_checkpoint_is_used_when_present(val_dir, ckpt, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEFAULT_CKPT", ckpt)
    rep = report(["--sidd-val", val_dir, *FAST, "--limit", 1], capsys, tmp_path)
    assert rep["checkpoint"] == {"path": str(ckpt), "sha256": checkpoint_sha256(ckpt)}


def test_shipped_demo_weights_denoise_the_demo_set(capsys, tmp_path, monkeypatch):
    """`python evaluate.py` with no option: the committed demo checkpoint on the demo set.

    Measured when it was made (README): 30.07 dB / 0.839 against the noisy 26.56 dB / 0.504
    with the default inference and seed 0. The PSNR bound is the issue's: at least 3 dB over
    the noisy input.
    """
    monkeypatch.setenv("AMBSN_CACHE", str(tmp_path / "cache"))
    rep = report([], capsys, tmp_path)
    assert rep["checkpoint"]["path"] == str(cli.DEFAULT_CKPT) and len(rep["blocks"]) == 16
    assert rep["psnr"] - rep["noisy_psnr"] >= 3.0
    assert rep["ssim"] - rep["noisy_ssim"] > 0.3


def test_orbax_digest_follows_contents_not_location(ckpt, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(ckpt, copy)
    assert checkpoint_sha256(copy) == checkpoint_sha256(ckpt)
    some_file = next(p for p in sorted(copy.rglob("*")) if p.is_file())
    some_file.write_bytes(some_file.read_bytes() + b"\0")
    assert checkpoint_sha256(copy) != checkpoint_sha256(ckpt)


# --- SIDD benchmark submissions -----------------------------------------------------------


def _decode_csv(path: Path, shape: tuple[int, ...]) -> np.ndarray:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["ID", "BLOCK"]
    assert [int(r[0]) for r in rows[1:]] == list(range(shape[0] * shape[1]))
    data = [np.frombuffer(base64.b64decode(r[1]), np.uint8).reshape(shape[2:]) for r in rows[1:]]
    return np.stack(data).reshape(shape)


def test_submissions_round_trip_and_pass_the_check(bench_dir, ckpt, model, capsys, tmp_path):
    for name in ("sub.csv", "sub.mat"):
        code, out, err = run(["--ckpt", ckpt, "--sidd-bench", bench_dir, "--submission", tmp_path / name, *FAST], capsys)
        assert code == 0, err
    from_csv = _decode_csv(tmp_path / "sub.csv", SHAPE)
    from_mat = scipy.io.loadmat(tmp_path / "sub.mat")[MAT_VARIABLE]
    assert from_mat.dtype == np.uint8
    np.testing.assert_array_equal(from_csv, from_mat)
    # And they hold the denoised blocks, image-major, rounded as the release rounds.
    noisy = _blocks(1)[0].reshape(-1, *SHAPE[2:]).astype(np.float32)
    keys = jax.random.split(jax.random.key(0), len(noisy))
    direct = Denoiser(model, InferenceConfig(tta=False, r3=False))(noisy, keys)
    np.testing.assert_array_equal(from_csv.reshape(noisy.shape), np.asarray(postprocess(direct)))
    assert no_temp_files(tmp_path)

    for name in ("sub.csv", "sub.mat"):
        code, out, err = run(["--check-submission", tmp_path / name, "--sidd-bench", bench_dir], capsys)
        assert code == 0 and out.startswith("ok:") and err == ""


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
    write_submission(good, _blocks(1)[0])
    assert run(["--check-submission", good, "--sidd-bench", bench_dir], capsys)[0] == 0
    with open(good, newline="") as f:
        rows = list(csv.reader(f))[1:]
    bad = tmp_path / "bad.csv"
    with open(bad, "w", newline="") as f:
        csv.writer(f).writerows([["ID", "BLOCK"], *_bad_csv(rows, case)])
    code, out, err = run(["--check-submission", bad, "--sidd-bench", bench_dir], capsys)
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {bad}: ") and BAD_CSV[case] in err


def test_check_submission_rejects_bad_header_mat_shape_and_suffix(bench_dir, capsys, tmp_path):
    header = tmp_path / "header.csv"
    header.write_text("Id,Block\n")
    small = tmp_path / "small.mat"
    save_blocks_mat(small, _blocks(1)[0][:1], MAT_VARIABLE)
    other = tmp_path / "sub.txt"
    other.write_text("")
    for path, message in [
        (header, "header is ['Id', 'Block'], not ['ID', 'BLOCK']"),
        (small, "holds blocks (1, 2, 20, 16, 3), the benchmark has (2, 2, 20, 16, 3)"),
        (other, "a submission is a .csv (Kaggle) or a .mat file"),
        (tmp_path / "absent.csv", "no such file"),
    ]:
        code, out, err = run(["--check-submission", path, "--sidd-bench", bench_dir], capsys)
        assert code == 2 and err.count("\n") == 1 and message in err, err


# --- image files --------------------------------------------------------------------------


def _write(path: Path, pixels: np.ndarray) -> None:
    assert cv2.imwrite(str(path), pixels)


def test_folder_keeps_size_depth_channels_and_reports_unreadable_files(model, ckpt, capsys, tmp_path):
    rng = np.random.default_rng(0)
    src, dst = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    inputs = {
        "odd.png": rng.integers(0, 256, (17, 23, 3), dtype=np.uint8),  # tiled below: 16-pixel tiles
        "deep.tif": rng.integers(0, 65536, (20, 18, 3), dtype=np.uint16),
        "gray.png": rng.integers(0, 256, (16, 19), dtype=np.uint8),
        "rgba.png": rng.integers(0, 256, (24, 16, 4), dtype=np.uint8),
        "small.bmp": rng.integers(0, 256, (9, 11, 3), dtype=np.uint8),  # below one tile: whole
    }
    for name, pixels in inputs.items():
        _write(src / name, pixels)
    (src / "broken.png").write_bytes(b"not an image")

    argv = ["--ckpt", ckpt, "--input", src, "--output", dst, "--no-r3", "--tile", 16, "--overlap", 4, "--batch", 3]
    code, out, err = run(argv, capsys)
    assert code == 1
    assert err.count("\n") == 1 and err.startswith(f"error: {src / 'broken.png'}: not a readable image")
    assert "wrote 5 of 6 images" in out
    for name, pixels in inputs.items():
        written = cv2.imread(str(dst / f"{Path(name).stem}.png"), cv2.IMREAD_UNCHANGED)
        assert written.shape == pixels.shape and written.dtype == pixels.dtype, name
    np.testing.assert_array_equal(cv2.imread(str(dst / "rgba.png"), cv2.IMREAD_UNCHANGED)[..., 3], inputs["rgba.png"][..., 3])
    assert sorted(p.name for p in dst.iterdir()) == ["deep.png", "gray.png", "odd.png", "rgba.png", "small.png"]

    # The content: the tiled inference, in RGB order, rounded as the release rounds.
    image, _ = read_image(src / "odd.png")
    want = postprocess(denoise_image(Denoiser(model, InferenceConfig(r3=False)), image, jax.random.key(0), 16, 4, 3))
    got = cv2.cvtColor(cv2.imread(str(dst / "odd.png")), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(got, np.asarray(want))


def test_single_image_input(ckpt, capsys, tmp_path):
    _write(tmp_path / "a.jpg", np.full((12, 10, 3), 90, np.uint8))
    code, out, err = run(["--ckpt", ckpt, "--input", tmp_path / "a.jpg", "--output", tmp_path / "o", *FAST], capsys)
    assert code == 0 and err == "" and (tmp_path / "o" / "a.png").is_file()


# --- DND ----------------------------------------------------------------------------------


def _fake_dnd(root: Path, images: list[np.ndarray], boxes: list[list[list[int]]]) -> None:
    """The DND kit's layout in MATLAB v7.3: info.boundingboxes as a cell of per-image arrays."""
    (root / "images_srgb").mkdir(parents=True)
    with h5py.File(root / "info.mat", "w") as f:
        refs = [f.create_dataset(f"#refs#/b{i}", data=np.asarray(b, np.float64).T).ref for i, b in enumerate(boxes)]
        f.create_group("info").create_dataset("boundingboxes", data=np.array([refs], dtype=h5py.ref_dtype))
    for i, image in enumerate(images, start=1):
        with h5py.File(root / "images_srgb" / f"{i:04d}.mat", "w") as f:
            f.create_dataset("InoisySRGB", data=image.T)


def test_dnd_writes_the_kits_box_and_bundled_files(model, ckpt, capsys, tmp_path):
    rng = np.random.default_rng(0)
    images = [rng.uniform(0, 1, (30, 34, 3)) for _ in range(2)]
    boxes = [[[3, 5, 18, 24], [1, 1, 16, 16]], [[10, 12, 27, 27], [5, 2, 20, 17]]]  # [r1 c1 r2 c2], 1-based
    _fake_dnd(tmp_path / "dnd", images, boxes)
    out = tmp_path / "sub"
    code, stdout, err = run(["--ckpt", ckpt, "--dnd", tmp_path / "dnd", "--submission-dir", out, "--no-r3"], capsys)
    assert code == 0, err
    assert "wrote 4 boxes" in stdout

    denoiser = Denoiser(model, InferenceConfig(r3=False))
    for i, (image, image_boxes) in enumerate(zip(images, boxes), start=1):
        bundled = scipy.io.loadmat(out / "bundled" / f"{i:04d}.mat")
        assert bundled["Idenoised"].shape == (1, 2) and bool(bundled["israw"]) is False
        assert bundled["eval_version"][0] == "1.0"
        for k, (r1, c1, r2, c2) in enumerate(image_boxes, start=1):
            crop = scipy.io.loadmat(out / f"{i:04d}_{k:02d}.mat")["Idenoised_crop"]
            assert crop.dtype == np.float32 and crop.shape == (r2 - r1 + 1, c2 - c1 + 1, 3)
            noisy = image[r1 - 1 : r2, c1 - 1 : c2].astype(np.float32) * 255
            want = np.asarray(postprocess(denoise_image(denoiser, noisy, jax.random.key(0)))) / 255
            np.testing.assert_array_equal(crop, want.astype(np.float32))
            np.testing.assert_array_equal(bundled["Idenoised"][0, k - 1], crop)
    assert no_temp_files(out)


# --- errors -------------------------------------------------------------------------------


def _garbage(path: Path) -> Path:
    path.write_bytes(b"garbage")
    return path


def _png_folder(folder: Path, *names: str) -> Path:
    folder.mkdir()
    for name in names:
        _write(folder / name, np.zeros((8, 8, 3), np.uint8))
    return folder


def _val_folder(root: Path, noisy: dict[str, np.ndarray], clean: np.ndarray) -> Path:
    """A validation folder whose noisy file holds the variables `noisy`."""
    root.mkdir()
    scipy.io.savemat(root / VALIDATION_NOISY, noisy)
    save_blocks_mat(root / VALIDATION_CLEAN, clean, "ValidationGtBlocksSrgb")
    return root


def _garbage_val_folder(root: Path, val_dir: Path) -> Path:
    shutil.copytree(val_dir, root)
    _garbage(root / VALIDATION_NOISY)
    return root


def _dnd(root: Path, image_shapes: list[tuple[int, ...]], boxes: list[list[list[int]]]) -> Path:
    _fake_dnd(root, [np.zeros(s) for s in image_shapes], boxes)
    return root


NOISY, CLEAN = _blocks(0)
NOISY_VAR = "ValidationNoisyBlocksSrgb"
# Name -> (argv from (tmp_path, val_dir, bench_dir, ckpt), a part of the one error line).
ERRORS = {
    "missing val folder": (lambda t, v, b, c: ["--sidd-val", t / "nope"], "nope: no such folder"),
    "missing noisy file": (lambda t, v, b, c: ["--sidd-val", t], f"{VALIDATION_NOISY}: no such file"),
    "no expected variable": (
        lambda t, v, b, c: ["--sidd-val", _val_folder(t / "v", {"blocks": NOISY, "extra": NOISY}, CLEAN)],
        "no variable 'ValidationNoisyBlocksSrgb' (found: blocks, extra)",
    ),
    "wrong shape": (
        lambda t, v, b, c: ["--sidd-val", _val_folder(t / "v", {NOISY_VAR: NOISY[0]}, CLEAN)],
        "has shape (2, 20, 16, 3), not (images, blocks, height, width, 3)",
    ),
    "wrong dtype": (
        lambda t, v, b, c: ["--sidd-val", _val_folder(t / "v", {NOISY_VAR: NOISY * 1.0}, CLEAN)],
        "not uint8",
    ),
    "shape mismatch": (
        lambda t, v, b, c: ["--sidd-val", _val_folder(t / "v", {NOISY_VAR: NOISY[:1]}, CLEAN)],
        "noisy blocks (1, 2, 20, 16, 3) and clean blocks (2, 2, 20, 16, 3) differ in shape",
    ),
    "blocks too small": (
        lambda t, v, b, c: ["--sidd-val", _val_folder(t / "v", {NOISY_VAR: NOISY[..., :2, :2, :]}, CLEAN[..., :2, :2, :]), "--ckpt", c],
        "blocks of 2x2 pixels: too small",
    ),
    "no blocks": (
        lambda t, v, b, c: ["--sidd-val", _val_folder(t / "v", {NOISY_VAR: NOISY[:0]}, CLEAN[:0])],
        "holds no blocks (shape (0, 2, 20, 16, 3))",
    ),
    "unreadable mat": (
        lambda t, v, b, c: ["--sidd-val", _garbage_val_folder(t / "v", v)],
        "not a readable MATLAB .mat file",
    ),
    "missing ckpt": (lambda t, v, b, c: ["--sidd-val", v, "--ckpt", t / "absent"], "no such checkpoint"),
    "unreadable pth": (
        lambda t, v, b, c: ["--sidd-val", v, "--ckpt", _garbage(t / "x.pth")],
        "x.pth: ",  # the wording is torch_port's
    ),
    "no ckpt and none shipped": (
        lambda t, v, b, c: ["--sidd-val", v],
        "no --ckpt given and no demo checkpoint is shipped; pass --ckpt CKPT",
    ),
    "two datasets": (lambda t, v, b, c: ["--sidd-val", v, "--dnd", t], "give only one of --sidd-val, --dnd"),
    "input without output": (lambda t, v, b, c: ["--input", t], "--input needs --output"),
    "output without input": (lambda t, v, b, c: ["--sidd-val", v, "--output", t], "--output goes with --input only"),
    "bench without submission": (lambda t, v, b, c: ["--sidd-bench", b], "--sidd-bench needs --submission"),
    "bad submission suffix": (
        lambda t, v, b, c: ["--sidd-bench", b, "--submission", t / "s.txt", "--ckpt", c],
        "s.txt: a submission is a .csv (Kaggle) or a .mat file",
    ),
    "check without bench": (lambda t, v, b, c: ["--check-submission", t / "s.csv"], "needs --sidd-bench DIR"),
    "check with submission": (
        lambda t, v, b, c: ["--check-submission", t / "s.csv", "--sidd-bench", b, "--submission", t / "u.csv"],
        "leave out --submission",
    ),
    "json outside validation": (
        lambda t, v, b, c: ["--input", t, "--output", t / "o", "--json", t / "r.json"],
        "--json applies to validation",
    ),
    "batch zero": (lambda t, v, b, c: ["--batch", "0"], "argument --batch: '0' is not an integer >= 1"),
    "seed out of range": (lambda t, v, b, c: ["--seed", "-1"], "argument --seed: '-1' is not an integer in 0..4294967295"),
    "unknown option": (lambda t, v, b, c: ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    "overlap not below tile": (
        lambda t, v, b, c: ["--input", t, "--output", t / "o", "--tile", "16", "--overlap", "16"],
        "--overlap 16: must be below --tile 16",
    ),
    "no images in folder": (
        lambda t, v, b, c: ["--input", _png_folder(t / "empty"), "--output", t / "o", "--ckpt", c],
        "no image files in it",
    ),
    "output is the input folder": (
        lambda t, v, b, c: ["--input", _png_folder(t / "i", "a.png"), "--output", t / "i", "--ckpt", c],
        "would overwrite an input image",
    ),
    "two inputs, one output name": (
        lambda t, v, b, c: ["--input", _png_folder(t / "i", "a.png", "a.jpg"), "--output", t / "o", "--ckpt", c],
        "would both be written to",
    ),
    "dnd without info.mat": (
        lambda t, v, b, c: ["--dnd", t, "--submission-dir", t / "o", "--ckpt", c],
        "info.mat: no such file",
    ),
    "dnd info.mat not hdf5": (
        lambda t, v, b, c: ["--dnd", _garbage(t / "info.mat").parent, "--submission-dir", t / "o"],
        "not DND's info.mat",
    ),
    "dnd box outside image": (
        lambda t, v, b, c: ["--dnd", _dnd(t / "d", [(10, 10, 3)], [[[1, 1, 12, 10]]]), "--submission-dir", t / "o", "--ckpt", c],
        "box [1, 1, 12, 10] lies outside the 10x10 image",
    ),
    "dnd image missing": (
        lambda t, v, b, c: ["--dnd", _dnd(t / "d", [], [[[1, 1, 4, 4]]]), "--submission-dir", t / "o", "--ckpt", c],
        "0001.mat: no such file; info.mat lists image 1",
    ),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_bad_input_gives_one_error_line(case, val_dir, bench_dir, ckpt, capsys, tmp_path, monkeypatch):
    monkeypatch.setattr(cli, "DEFAULT_CKPT", tmp_path / "no_demo_ckpt")
    make_argv, message = ERRORS[case]
    code, out, err = run(make_argv(tmp_path, val_dir, bench_dir, ckpt), capsys)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
    assert "Traceback" not in err and out == ""


def test_interrupted_write_leaves_no_file(tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "report.json") as tmp:
            tmp.write_text("{half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "file").write_text("")
    with pytest.raises(UserError, match="below_a_file.json: cannot write it"):
        with atomic_path(tmp_path / "file" / "below_a_file.json") as tmp:
            tmp.write_text("x")


# --- the real entry point -----------------------------------------------------------------


def test_evaluate_py_runs_end_to_end(val_dir, ckpt, tmp_path):
    """The script itself, full default inference (TTA + R3); and an error without a traceback."""
    script = [sys.executable, str(REPO / "evaluate.py"), "--ckpt", str(ckpt)]
    done = subprocess.run([*script, "--sidd-val", str(val_dir), "--limit", "2", "--json", str(tmp_path / "r.json")],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"2 blocks of {val_dir}: PSNR ")
    assert json.loads((tmp_path / "r.json").read_text())["options"]["r3"] is True
    failed = subprocess.run([*script, "--sidd-val", str(tmp_path / "nope")], capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and failed.stderr.startswith("error: ") and "Traceback" not in failed.stderr
