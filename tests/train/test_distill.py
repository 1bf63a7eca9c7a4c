"""Distillation (ambsn_jax.train.distill and the loop's distill mode): the student trains from a
teacher checkpoint through train.py on the teacher's default inference of the training images,
made once (they are what `evaluate.py --input` writes) and reused by a resumed run; the result
is a student checkpoint that evaluate.py runs in one pass."""

from __future__ import annotations

import json

import cv2
import jax
import numpy as np
import pytest

from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint.store import load_checkpoint, params_of, save_params
from ambsn_jax.cli.train import main as train_main
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.nets.tmbsn import TMBSNConfig
from ambsn_jax.train import distill
from ambsn_jax.train.validation import EVAL_FILE
from tests.helpers import evaluate, one_error_line, run_main, write_images

RECHARGE = ("--set", "model.arch=nbsn", "distill.recharge=[2,5]")


def distill_argv(data, workdir, teacher, val_dir, steps: int, *extra: str) -> list[str]:
    return [
        "--config", "distill_demo", "--data-dir", str(data), "--workdir", str(workdir), "--max-steps", str(steps),
        "--save-every", "3", "--set", f"distill.teacher={teacher}", f"val.dir={val_dir}", "model.base_ch=4", "model.depth=2",
        "data.crop=16", "data.workers=0", "train.batch_size=2", "train.steps_per_epoch=3", "log.every=1",
        "val.blocks_per_image=null", *extra,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("distill_data")
    write_images(folder, 3, size=(24, 28))
    return folder


@pytest.fixture(scope="module")
def run(data, ckpt, val_dir, tmp_path_factory):
    """A 6-step distillation of the scaled test AM-BSN (C = 8) into a C = 4 student."""
    workdir = tmp_path_factory.mktemp("distill") / "run"
    assert train_main(distill_argv(data, workdir, ckpt, val_dir, 6)) == 0
    return workdir


def test_the_targets_are_the_teachers_evaluate_outputs(run, data, ckpt, tmp_path, capsys):
    code, _, err = evaluate(["--ckpt", ckpt, "--input", data, "--output", tmp_path / "out"], capsys)
    assert code == 0, err
    made = sorted((run / "teacher").glob("*.png"))
    assert [p.name for p in made] == sorted(p.name for p in (tmp_path / "out").glob("*.png")) and len(made) == 3
    for target in made:
        np.testing.assert_array_equal(cv2.imread(str(target)), cv2.imread(str(tmp_path / "out" / target.name)))
    # The same record too: a folder evaluate.py wrote for this teacher is taken as the targets.
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.png")}
    distill.teacher_targets(str(ckpt), sorted(data.glob("*.png")), tmp_path / "out", seed=0, precision="highest")
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "out").glob("*.png")} == written


def test_the_run_is_a_student_evaluated_in_one_pass(run, ckpt):
    checkpoint = load_checkpoint(run)
    meta = checkpoint.meta
    assert (meta.arch, meta.config["base_ch"], meta.config["depth"]) == ("student", 4, 2)
    assert (meta.train_pd, meta.train_pd_pad) == (1, 0)
    assert meta.source == f"config distill_demo, distilled from {ckpt}"
    report = json.loads((run / EVAL_FILE).read_text())
    assert report["options"] | {"pd_b": 1, "R3": False, "tta": False} == report["options"]
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [line["loss"] for line in lines if "loss" in line]
    assert len(losses) == 6 and np.all(np.isfinite(losses)) and losses[0] > 0


def test_a_resumed_run_reuses_the_targets(run, data, ckpt, val_dir):
    made = {p: p.stat().st_mtime_ns for p in (run / "teacher").glob("*.png")}
    assert train_main(distill_argv(data, run, ckpt, val_dir, 9)) == 0
    assert {p: p.stat().st_mtime_ns for p in (run / "teacher").glob("*.png")} == made
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert sorted(set(steps)) == list(range(1, 10))


def test_evaluate_runs_the_student_on_folders(run, data, tmp_path, capsys):
    code, out, err = evaluate(["--ckpt", run, "--input", data, "--output", tmp_path / "out", "--self-ensemble"], capsys)
    assert code == 0, err
    assert "student U-Net, C=4" in err and "wrote 3 of 3 images" in out


def test_a_student_is_no_teacher(run, data, val_dir, tmp_path, capsys):
    code, _, err = run_main(train_main, distill_argv(data, tmp_path / "w", run, val_dir, 3), capsys)
    assert code == 2
    assert "the teacher must be AM-BSN, AP-BSN or MM-BSN" in one_error_line(err)


def test_a_release_pth_teaches_as_its_converted_checkpoint(run, data, pth, tmp_path):
    """`distill.teacher` takes a release .pth: the fixture's .pth holds the same network as the
    Orbax checkpoint the run learnt from, so its targets are the run's, bit for bit."""
    images = sorted(data.glob("*.png"))
    pairs = distill.teacher_targets(str(pth), images, tmp_path / "targets", seed=0, precision="highest")
    assert [source for source, _ in pairs] == images
    for _, target in pairs:
        np.testing.assert_array_equal(cv2.imread(str(target)), cv2.imread(str(run / "teacher" / target.name)))


def test_an_nbsn_student_distils_saves_and_resumes(data, ckpt, val_dir, tmp_path):
    """`model.arch=nbsn` is the student: 3 steps, saved, then resumed to 6 from step 3."""
    workdir = tmp_path / "nbsn"
    nbsn = ("--set", "model.arch=nbsn")
    assert train_main(distill_argv(data, workdir, ckpt, val_dir, 3, *nbsn)) == 0
    assert load_checkpoint(workdir).step == 3
    assert train_main(distill_argv(data, workdir, ckpt, val_dir, 6, *nbsn)) == 0
    checkpoint = load_checkpoint(workdir)
    assert (checkpoint.step, checkpoint.meta.arch, checkpoint.meta.config["depth"]) == (6, "nbsn", 2)
    steps = [json.loads(line)["step"] for line in (workdir / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert steps[-1] == 6 and 4 in steps


def test_fresh_noise_reads_each_scenes_ground_truth_once(tmp_path):
    scenes = [tmp_path / f"000{i}_00{i}_S6_01300_00100_5500_N" for i in (1, 2)]
    for scene in scenes:
        scene.mkdir()
        for kind in ("NOISY_SRGB_010", "NOISY_SRGB_011", "GT_SRGB_010"):
            (scene / f"{scene.name}_{kind}.PNG").write_bytes(b"")
    noisy = sorted(tmp_path.glob("*/*_NOISY_*"))
    assert distill.clean_sources(noisy) == [s / f"{s.name}_GT_SRGB_010.PNG" for s in scenes]
    (scenes[1] / f"{scenes[1].name}_GT_SRGB_010.PNG").unlink()
    with pytest.raises(UserError, match="ground truth .*_GT_SRGB_010.PNG is missing"):
        distill.clean_sources(noisy)


def test_a_fresh_noise_run_trains_on_the_ground_truths_noised_afresh(val_dir, tmp_path):
    """data.fresh_noise through train.py: SIDD Medium scenes whose noisy shots are black, so
    that pairs of them would cost next to nothing, while the ground truths noised afresh cost
    their noise; the checkpoints say what the run learned from."""
    for i, gt in enumerate(write_images(tmp_path / "clean", 2, size=(24, 28))):
        scene = tmp_path / "data" / f"000{i + 1}_00{i + 1}_S6_01300_00100_5500_N"
        scene.mkdir(parents=True)
        gt.rename(scene / f"{scene.name}_GT_SRGB_010.PNG")
        for shot in ("010", "011"):
            cv2.imwrite(str(scene / f"{scene.name}_NOISY_SRGB_{shot}.PNG"), np.zeros((24, 28, 3), np.uint8))
    workdir = tmp_path / "run"
    assert train_main(distill_argv(tmp_path / "data", workdir, distill.SHOTS, val_dir, 2, "data.fresh_noise=true")) == 0
    losses = [json.loads(line)["loss"] for line in (workdir / "metrics.jsonl").read_text().splitlines() if "loss" in line]
    assert len(losses) == 2 and all(loss > 2 for loss in losses), losses
    meta = load_checkpoint(workdir).meta
    assert meta.source == f"config distill_demo, {distill.source_note(distill.SHOTS, fresh_noise=True)}"


def test_shots_pair_each_noisy_shot_with_its_scenes_other(tmp_path):
    scene = tmp_path / "0001_001_S6_01300_00100_5500_N"
    scene.mkdir()
    shots = [scene / f"{scene.name}_NOISY_SRGB_01{i}.PNG" for i in (0, 1)]
    patch = scene / f"{scene.name}_NOISY_SRGB_010_y0000_x0256.png"
    for path in [*shots, patch, scene / f"{scene.name}_NOISY_SRGB_011_y0000_x0256.png"]:
        path.write_bytes(b"")
    pairs = distill.shot_pairs([*shots, patch])
    assert pairs == [(shots[0], shots[1]), (shots[1], shots[0]), (patch, patch.with_name(patch.name.replace("_010", "_011")))]
    shots[1].unlink()
    with pytest.raises(UserError, match="other shot"):
        distill.shot_pairs([shots[0]])
    with pytest.raises(UserError, match="not a SIDD Medium noisy shot"):
        distill.shot_pairs([tmp_path / "photo.png"])


@pytest.fixture(scope="module")
def tmbsn_teacher(tmp_path_factory):
    """A random narrow TM-BSN (C = 4, one block) as an Orbax checkpoint."""
    cfg = TMBSNConfig(base_ch=4, blocks=1)
    path = tmp_path_factory.mktemp("tmbsn") / "orbax"
    save_params(path, params_of(registry.build("tmbsn", cfg, 0)), CheckpointMeta.for_release("tmbsn", cfg, source="random TM-BSN"))
    return path


def _losses(workdir):
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {line["step"]: line["loss"] for line in lines if "loss" in line}


def test_a_recharged_run_learns_each_hole_and_resumes_as_uninterrupted(data, tmbsn_teacher, val_dir, tmp_path, capsys):
    """`distill.recharge` [2, 5]: the teacher's evaluate.py outputs at hole 2 and 5, each in its
    folder; 6 steps straight equal 3, saved, then resumed to 6 (the Recharger's draws included)."""
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(distill_argv(data, straight, tmbsn_teacher, val_dir, 6, *RECHARGE)) == 0
    assert train_main(distill_argv(data, resumed, tmbsn_teacher, val_dir, 3, *RECHARGE)) == 0
    capsys.readouterr()
    assert train_main(distill_argv(data, resumed, tmbsn_teacher, val_dir, 6, *RECHARGE)) == 0
    assert "resuming at step 3" in capsys.readouterr().out
    assert _losses(resumed) == _losses(straight) and sorted(_losses(straight)) == list(range(1, 7))
    end = load_checkpoint(resumed)
    jax.tree.map(np.testing.assert_array_equal, end.params, load_checkpoint(straight).params)
    assert end.meta.source.endswith("its holes 2, 5 recharged")
    # Hole 2 is TM-BSN's default inference, as distillation without the Recharger learns it.
    images = sorted(data.glob("*.png"))
    plain = distill.teacher_targets(str(tmbsn_teacher), images, tmp_path / "plain", seed=0, precision="highest")
    for image, target in plain:
        hole2, hole5 = (cv2.imread(str(straight / "teacher" / f"hole{h}" / target.name)) for h in (2, 5))
        np.testing.assert_array_equal(hole2, cv2.imread(str(target)))
        assert not np.array_equal(hole2, hole5)


def test_recharge_needs_a_tmbsn_teacher(data, ckpt, val_dir, tmp_path, capsys):
    code, _, err = run_main(train_main, distill_argv(data, tmp_path / "w", ckpt, val_dir, 3, *RECHARGE), capsys)
    assert code == 2
    assert "distill.recharge: mixes a TM-BSN teacher's outputs at several hole sizes" in one_error_line(err)
