"""SIDD validation and benchmark blocks (ambsn_jax.evaluation.sidd): scores as the release
computes them, R3 draws per block, the report's options and checkpoint record.

Tiny synthetic SIDD-format files (2 images x 2 blocks of 20 x 16, conftest) and a width-8
network; runs go through `evaluate.py`'s main in-process where the command is the point.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from skimage.color import rgb2ycbcr
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from ambsn_jax.checkpoint.store import load_checkpoint
from ambsn_jax.convert.reference import ReleaseDenoiser, twin_of
from ambsn_jax.data.sidd import load_blocks, save_blocks_mat, save_blocks_mat73
from ambsn_jax.evaluation import sidd
from ambsn_jax.evaluation.common import checkpoint_record
from ambsn_jax.evaluation.sidd import VALIDATION_CLEAN, VALIDATION_NOISY
from ambsn_jax.files import sha256_tree
from ambsn_jax.inference.keys import item_keys
from ambsn_jax.inference.release import InferenceConfig, postprocess
from ambsn_jax.metrics import psnr, ssim
from ambsn_jax.nets.ambsn import AMBSNConfig
from ambsn_jax.nets.tmbsn import TMBSNConfig
from ambsn_jax.ops.windows import pad_to_min_side
from tests.helpers import RELEASE, SIDD_SHAPE, TMBSN_RELEASE_ENV, block_numbers, bound, evaluate_report, keys, sidd_blocks, sidd_blocks_of, tmbsn_release, write_pth

FAST = ["--no-tta", "--no-r3"]  # cheapest compilation, where the inference itself is not the point


def test_validation_equals_the_pytorch_reference_pipeline(val_dir, pth, scaled_state_dict, capsys, tmp_path):
    rep = evaluate_report(["--ckpt", pth, "--sidd-val", val_dir, "--no-r3", "--batch", 3], capsys, tmp_path)

    ref = ReleaseDenoiser(base_ch=8, R3=False).eval()
    ref.load_state_dict(scaled_state_dict)
    noisy, clean = sidd_blocks(0)
    flat_noisy, flat_clean = noisy.reshape(-1, *SIDD_SHAPE[2:]), clean.reshape(-1, *SIDD_SHAPE[2:])
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
        "pd_a": 5, "pd_b": 2, "pd_pad": 2, "R3": False, "R3_T": 8, "R3_p": 0.16, "tta": True,
        "self_ensemble": 1, "precision": "highest", "winograd": False,
    }  # fmt: skip
    assert rep["checkpoint"] == {
        "path": str(pth), "step": None, "sha256": hashlib.sha256(pth.read_bytes()).hexdigest(),
        "arch": "ambsn", "config": AMBSNConfig(base_ch=8).to_dict(), "train_pd": 5, "source": "release.pth",
    }  # fmt: skip
    assert set(rep["timing"]) == {"compile_s", "per_block_s", "total_s"}
    assert 0 < rep["timing"]["per_block_s"] and rep["timing"]["compile_s"] < rep["timing"]["total_s"]


def test_r3_numbers_depend_on_the_seed_only(val_dir, ckpt, capsys, tmp_path):
    # R3 on (TTA off to keep compilation short): the draws follow the seed and the block number,
    # not the batch size or --limit.
    base = ["--ckpt", ckpt, "--sidd-val", val_dir, "--no-tta"]
    first = block_numbers(evaluate_report([*base, "--seed", 1, "--batch", 4], capsys, tmp_path, "a.json"))
    again = block_numbers(evaluate_report([*base, "--seed", 1, "--batch", 3], capsys, tmp_path, "b.json"))
    limited = block_numbers(evaluate_report([*base, "--seed", 1, "--batch", 1, "--limit", 2], capsys, tmp_path, "c.json"))
    other = block_numbers(evaluate_report([*base, "--seed", 2, "--batch", 4], capsys, tmp_path, "d.json"))
    np.testing.assert_allclose(again, first, rtol=0, atol=1e-9)
    np.testing.assert_allclose(limited, first[:2], rtol=0, atol=1e-9)
    assert np.all(other[:, 1] != first[:, 1])


def test_inference_switches_reach_the_denoiser(val_dir, ckpt, model, capsys, tmp_path):
    rep = evaluate_report(["--ckpt", ckpt, "--sidd-val", val_dir, *FAST, "--self-ensemble", "--precision", "bf16"], capsys, tmp_path)
    noisy, clean = (b.reshape(-1, *SIDD_SHAPE[2:]) for b in sidd_blocks(0))
    cfg = InferenceConfig(pd_a=5, pd_pad=2, tta=False, r3=False, self_ensemble=True, precision="bf16")
    out = np.asarray(postprocess(bound(model, cfg)(noisy.astype(np.float32), keys(len(noisy)))))
    np.testing.assert_allclose(block_numbers(rep)[:, 0], [psnr(c, o) for c, o in zip(clean, out)], rtol=0, atol=1e-9)
    assert rep["options"]["self_ensemble"] == 8 and rep["options"]["precision"] == "bf16"
    assert not rep["options"]["tta"] and not rep["options"]["R3"]


def test_matlab_v73_files_score_as_v5(val_dir, ckpt, capsys, tmp_path):
    v73 = tmp_path / "v73"
    v73.mkdir()
    for name in (VALIDATION_NOISY, VALIDATION_CLEAN):
        save_blocks_mat73(v73 / name, load_blocks(val_dir / name), Path(name).stem)
    v5_numbers = block_numbers(evaluate_report(["--ckpt", ckpt, "--sidd-val", val_dir, *FAST], capsys, tmp_path, "a.json"))
    v73_numbers = block_numbers(evaluate_report(["--ckpt", ckpt, "--sidd-val", v73, *FAST], capsys, tmp_path, "b.json"))
    np.testing.assert_array_equal(v73_numbers, v5_numbers)


def test_evaluate_validation_is_the_report_of_the_command(val_dir, ckpt, capsys, tmp_path):
    checkpoint = load_checkpoint(ckpt)
    cfg = dataclasses.replace(RELEASE, tta=False, r3=False)
    report = sidd.evaluate_validation(checkpoint, val_dir, cfg, seed=0, batch=4, limit=3)
    command = evaluate_report(["--ckpt", ckpt, "--sidd-val", val_dir, *FAST, "--limit", 3], capsys, tmp_path)
    assert report["options"] == command["options"] and report["checkpoint"] == command["checkpoint"]
    np.testing.assert_array_equal(block_numbers(report), block_numbers(command))
    assert report["checkpoint"] == checkpoint_record(checkpoint)
    assert report["checkpoint"]["step"] == 0 and report["checkpoint"]["path"] == str(ckpt)
    assert report["checkpoint"]["sha256"] == sha256_tree(ckpt / "0")  # the step read, not the whole folder
    line = sidd.summary_line(report)
    assert line.startswith(f"3 blocks of {val_dir}: PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f} (noisy input ")
    sidd.write_json(tmp_path / "r.json", report)
    assert json.loads((tmp_path / "r.json").read_text()) == json.loads(json.dumps(report))


@pytest.mark.parametrize("size", [(2, 2), (2, 5)])
def test_blocks_smaller_than_r3_needs_are_padded_and_cropped_back(model, size):
    """R3 reflects pd_pad pixels: a block under pd_pad + 1 on a side is edge-padded for the
    network, and its result cropped back to the block."""
    noisy = np.random.default_rng(3).integers(0, 256, (1, 3, *size, 3), dtype=np.uint8)
    denoiser = bound(model, dataclasses.replace(RELEASE, tta=False))
    padded = pad_to_min_side(noisy[0], 3, axes=(1, 2)).astype(np.float32)
    assert padded.shape[1:3] == (3, max(3, size[1]))
    want = np.asarray(postprocess(denoiser(padded, item_keys(4, range(3)))))[:, : size[0], : size[1]].astype(np.uint8)
    denoised = sidd.denoise_benchmark(denoiser, noisy, seed=4, batch=2)
    assert denoised.shape == noisy.shape and denoised.dtype == np.uint8
    np.testing.assert_array_equal(denoised[0], want)
    assert want.std() > 0


def test_validation_blocks_too_small_to_score_are_refused(tmp_path):
    from ambsn_jax.data.sidd import save_blocks_mat
    from ambsn_jax.errors import UserError

    noisy, clean = sidd_blocks(0)
    save_blocks_mat(tmp_path / VALIDATION_NOISY, noisy[..., :10, :12, :], "ValidationNoisyBlocksSrgb")
    save_blocks_mat(tmp_path / VALIDATION_CLEAN, clean[..., :10, :12, :], "ValidationGtBlocksSrgb")
    with pytest.raises(UserError, match=r"blocks of 10x12 pixels: too small to score, the Gaussian SSIM needs 11x11"):
        sidd.load_validation(tmp_path)
    save_blocks_mat(tmp_path / VALIDATION_NOISY, noisy[..., :11, :11, :], "ValidationNoisyBlocksSrgb")
    save_blocks_mat(tmp_path / VALIDATION_CLEAN, clean[..., :11, :11, :], "ValidationGtBlocksSrgb")
    assert sidd.load_validation(tmp_path)[0].shape == (2, 2, 11, 11, 3)


def release_nbsn_pipeline(unit, noisy: np.ndarray, pad: int = 16) -> np.ndarray:
    """The NBSN release's benchmark_sidd.py on uint8 blocks (N, H, W, 3): x / 255, reflection by
    `pad`, the network `unit` (0..1 NCHW), crop, clip to 0..1, round x 255 to uint8."""
    out = []
    with torch.no_grad():
        for block in noisy:
            x = torch.from_numpy(block[None].astype(np.float32) / 255.0).permute(0, 3, 1, 2)
            y = unit(torch.nn.functional.pad(x, (pad,) * 4, mode="reflect"))[..., pad:-pad, pad:-pad]
            out.append(np.round(np.clip(y.permute(0, 2, 3, 1).numpy()[0], 0.0, 1.0) * 255).astype(np.uint8))
    return np.stack(out)


def assert_blocks_score_as(rep: dict, clean: np.ndarray, want: np.ndarray) -> None:
    """Per block within 1e-3 dB and 1e-4 SSIM of the scores of `want` (uint8 blocks)."""
    expect = np.array([[psnr(c, d), ssim(c, d)] for c, d in zip(clean, want)])
    got = block_numbers(rep)
    assert np.abs(got[:, 0] - expect[:, 0]).max() <= 1e-3
    assert np.abs(got[:, 1] - expect[:, 1]).max() <= 1e-4


def test_nbsn_validation_scores_as_its_release_pipeline(official_state_dict, capsys, tmp_path):
    """A narrow NBSN (C = 4, two pools) converted from a release-format bare .pth: `evaluate.py
    --ckpt x.pth --sidd-val` scores each block as the release's benchmark steps do, with no switch."""
    from ambsn_jax.convert.reference import twin_of
    from ambsn_jax.nets.nbsn import NBSNConfig

    cfg = NBSNConfig(base_ch=4, depth=2)
    sd = {k.removeprefix("bsn."): v.clone() for k, v in official_state_dict(cfg).items()}
    sd["dec1_1.weight"] *= 0.05  # outputs around 0.5 +- 0.1 (x 255), so rounding and both metrics see real values
    sd["dec1_1.bias"] += 0.5
    torch.save(sd, tmp_path / "nbsn.pth")
    rng = np.random.default_rng(3)
    clean = rng.integers(30, 220, (2, 2, 24, 36, 3), dtype=np.uint8)  # sides above the release's reflection of 16
    noisy = np.clip(clean + rng.normal(0, 20, clean.shape), 0, 255).astype(np.uint8)
    save_blocks_mat(tmp_path / VALIDATION_NOISY, noisy, "ValidationNoisyBlocksSrgb")
    save_blocks_mat(tmp_path / VALIDATION_CLEAN, clean, "ValidationGtBlocksSrgb")
    rep = evaluate_report(["--ckpt", tmp_path / "nbsn.pth", "--sidd-val", tmp_path], capsys, tmp_path)

    twin = twin_of(cfg).eval()
    twin.load_state_dict(sd, strict=True)
    want = release_nbsn_pipeline(twin.unit, noisy.reshape(-1, 24, 36, 3))
    assert 80 < want.mean() < 180 and want.std() > 5
    assert_blocks_score_as(rep, clean.reshape(-1, 24, 36, 3), want)
    assert rep["options"]["pad"] == 16 and (rep["options"]["pd_b"], rep["options"]["R3"], rep["options"]["tta"]) == (1, False, False)
    assert rep["checkpoint"]["arch"] == "nbsn"


def _release_nbsn(pth: str) -> torch.nn.Module:
    """The release's own N_BSN (AMBSN_TMBSN_RELEASE set) or its twin, holding `pth` as the
    release's scripts load it; its forward on 0..1."""
    from ambsn_jax.convert.reference import twin_of
    from ambsn_jax.nets.nbsn import NBSNConfig

    if os.environ.get(TMBSN_RELEASE_ENV):
        net = tmbsn_release("model/NBSN102.py").N_BSN()
    else:
        net = twin_of(NBSNConfig())  # the release's keys; its `unit` is the release's forward
    net.load_state_dict(torch.load(pth, map_location="cpu", weights_only=True), strict=True)
    return net.eval()


@pytest.mark.skipif(
    not os.environ.get("AMBSN_NBSN_PTH"),
    reason="set AMBSN_NBSN_PTH to the TM-BSN release's NBSN_SIDD.pth (and AMBSN_TMBSN_RELEASE to its checkout to run its own code)",
)
def test_the_release_nbsn_weights_score_the_demo_blocks_as_its_pipeline(capsys, tmp_path):
    from ambsn_jax.data.demo import demo_root

    pth = os.environ["AMBSN_NBSN_PTH"]
    rep = evaluate_report(["--ckpt", pth], capsys, tmp_path)  # no dataset: the demo validation blocks
    noisy, clean = sidd.load_validation(demo_root())
    net = _release_nbsn(pth)
    unit = net.unit if hasattr(net, "unit") else net
    want = release_nbsn_pipeline(unit, noisy.reshape(-1, *noisy.shape[2:]))
    assert_blocks_score_as(rep, clean.reshape(-1, *clean.shape[2:]), want)
    print(f"NBSN {Path(pth).name} on the demo validation blocks: PSNR {rep['psnr']:.2f} dB, SSIM {rep['ssim']:.4f}")


def test_tmbsn_scores_each_block_as_its_release_pipeline(official_state_dict, capsys, tmp_path):
    """A release-format TM-BSN .pth through `evaluate.py --ckpt`: per block, PSNR and both SSIMs
    as the release's benchmark_sidd.py / validation.py steps compute them on its network (the
    twin): /255, reflect pad 16, hole 2, crop, clip, round; its PSNR and its luma SSIM."""
    sd = dict(official_state_dict(TMBSNConfig(base_ch=8, blocks=1)))
    sd["bsn.nin_C.bias"] = sd["bsn.nin_C.bias"] + 0.5  # outputs around mid-grey, not ~0: rounding and clipping matter
    src = write_pth(tmp_path / "TMBSN.pth", sd, prefix="", container=False)
    noisy, clean = sidd_blocks_of(24, 24)
    root = tmp_path / "val"
    root.mkdir()
    save_blocks_mat73(root / VALIDATION_NOISY, noisy, "ValidationNoisyBlocksSrgb")
    save_blocks_mat73(root / VALIDATION_CLEAN, clean, "ValidationGtBlocksSrgb")
    rep = evaluate_report(["--ckpt", src, "--sidd-val", root], capsys, tmp_path)
    assert {k: rep["options"][k] for k in ("h", "pad", "pd_pad", "R3")} == {"h": 2, "pad": 16, "pd_pad": 0, "R3": False}

    twin = twin_of(TMBSNConfig(base_ch=8, blocks=1))
    twin.load_state_dict({k.removeprefix("bsn."): v for k, v in sd.items()}, strict=True)
    for block, x, gt in zip(rep["blocks"], noisy.reshape(-1, 24, 24, 3), clean.reshape(-1, 24, 24, 3)):
        xt = torch.from_numpy(x.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
        with torch.no_grad():
            out = twin.eval()(F.pad(xt, (16, 16, 16, 16), mode="reflect"), 2)[..., 16:-16, 16:-16]
        out = np.clip(out[0].permute(1, 2, 0).numpy(), 0.0, 1.0)
        out_u8, gt_f = np.round(out * 255).astype(np.uint8), gt.astype(np.float32) / 255.0
        mse = np.mean((out_u8.astype(np.float32) - np.round(gt_f * 255)) ** 2)
        luma = [rgb2ycbcr(np.round(a * 255).clip(0, 255).astype(np.uint8))[:, :, 0] for a in (out, gt_f)]
        ssim_luma = structural_similarity(*luma, data_range=255, win_size=11, gaussian_weights=True, sigma=1.5, K1=0.01, K2=0.03)
        assert abs(block["psnr"] - 10 * np.log10(255.0**2 / mse)) < 1e-3
        assert abs(block["ssim_y"] - ssim_luma) < 1e-4
        assert abs(block["ssim"] - ssim(gt, out_u8)) < 1e-4  # this project's SSIM of the release's pixels
