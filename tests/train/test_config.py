"""Training configs (ambsn_jax.train.config): the shipped recipes, overrides, checks."""

from __future__ import annotations

import re

from pathlib import Path

import pytest

import ambsn_jax
from ambsn_jax.errors import UserError
from ambsn_jax.train import config as configlib
from tests.helpers import flat


def test_configs_are_package_data():
    assert configlib.CONFIG_DIR == Path(ambsn_jax.__file__).resolve().parent / "configs"
    assert sorted(p.stem for p in configlib.CONFIG_DIR.glob("*.yaml")) == [
        "apbsn_sidd", "demo", "distill_demo", "distill_fresh_demo", "distill_nbsn_demo", "distill_nbsn_sidd", "distill_sidd", "mmbsn_sidd",
        "sidd", "sidd_bench", "tmbsn_demo", "tmbsn_sidd",
    ]  # fmt: skip


def test_sidd_configs_hold_the_release_recipe():
    cfg = configlib.resolve("sidd", [(["data", "dir"], "x")])
    assert (cfg.model.base_ch, cfg.data.crop, cfg.train.batch_size, cfg.train.pd, cfg.train.epochs) == (128, 120, 8, 5, 30)
    assert (cfg.data.patch_size, cfg.data.patch_stride, cfg.data.patches) == (512, 384, True)
    assert (cfg.optim.lr, cfg.optim.b1, cfg.optim.b2, cfg.optim.grad_clip) == (2e-4, 0.9, 0.999, None)
    assert (cfg.optim.decay_every_epochs, cfg.optim.decay_rate, cfg.optim.warmup_steps) == (8, 0.1, 0)
    bench = configlib.resolve("sidd_bench", [(["data", "dir"], "x")])
    assert bench.train.batch_size == 16 and bench.name == "sidd_bench"
    assert bench.to_dict() | {"name": "sidd", "train": cfg.to_dict()["train"]} == cfg.to_dict()
    demo = configlib.resolve("demo")
    assert demo.data.dir == "demo" and demo.val.dir == "demo" and demo.data.crop % demo.train.pd == 0


@pytest.mark.parametrize("name,arch,lr,epochs", [("apbsn_sidd", "apbsn", 1e-4, 20), ("mmbsn_sidd", "mmbsn", 1e-4, 30)])
def test_configs_hold_the_release_recipes(name, arch, lr, epochs):
    tree, sidd = flat(configlib.load_yaml_tree(name)), flat(configlib.load_yaml_tree("sidd"))
    assert (tree["model.arch"], tree["optim.lr"], tree["train.epochs"]) == (arch, lr, epochs)
    # Everything else is AM-BSN's recipe.
    differ = {"name", "model.arch", "optim.lr", "train.epochs"}
    assert {k: v for k, v in tree.items() if k not in differ} == {k: v for k, v in sidd.items() if k not in differ}


def test_overrides_are_yaml_typed_and_checked():
    cfg = configlib.resolve("sidd", [configlib.parse_override(s) for s in ("data.dir=/d", "optim.lr=1e-3", "optim.grad_clip=2")])
    assert cfg.optim.lr == 1e-3 and cfg.optim.grad_clip == 2.0 and cfg.data.dir == "/d"
    with pytest.raises(UserError, match="unknown config key optim.lrr; valid keys: .*optim.lr"):
        configlib.resolve("sidd", [configlib.parse_override("optim.lrr=1")])
    with pytest.raises(UserError, match="train.batch_size: 'eight' is not int"):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("train.batch_size=eight")])
    with pytest.raises(UserError, match="model.arch 'unet': must be one of ambsn, apbsn, mmbsn"):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("model.arch=unet")])
    with pytest.raises(UserError, match="config key train.max_steps: 0 must be positive"):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("train.max_steps=0")])
    with pytest.raises(UserError, match="config key train.pd_pad: -1 must not be negative"):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("train.pd_pad=-1")])
    with pytest.raises(UserError, match="multiple of train.pd"):
        configlib.resolve("sidd", [configlib.parse_override("data.dir=x"), configlib.parse_override("data.crop=42")])
    with pytest.raises(UserError, match="no config named 'nope'; known configs: .*demo, .*sidd, sidd_bench"):
        configlib.resolve("nope")
    with pytest.raises(UserError, match=r"--set 'optim.lr': expected key=value"):
        configlib.parse_override("optim.lr")


def test_check_values_is_what_resolve_applies():
    cfg = configlib.resolve("sidd", [(["data", "dir"], "x"), (["train", "pd"], 4), (["data", "crop"], 120)])
    assert configlib.check_values(cfg) is cfg and cfg.train.pd == 4


@pytest.mark.parametrize(
    "overrides, message",
    [
        ([("distill.teacher", None)], "the student U-Net learns from a teacher: --set distill.teacher=CKPT"),
        ([("model.arch", "ambsn"), ("model.depth", None), ("distill.teacher", "t")],
         "distill.teacher is set, but model.arch ambsn is a blind-spot network"),
        ([("model.arch", "ambsn")], "model.depth is the student's; AM-BSN has none"),
        ([("distill.teacher", "t"), ("train.pd", 5)], "the student U-Net sees whole images: train.pd must be 1 and train.pd_pad 0, not 5 and 0"),
        ([("distill.teacher", "t"), ("model.depth", -1)], "student U-Net config {'base_ch': 16, 'depth': -1}: depth must not be negative"),
        ([("data.fresh_noise", True)], "data.fresh_noise draws the two shots of Noise2Noise afresh from whole clean images: it needs distill.teacher=shots and data.patches=false (not demo, False)"),
        ([("data.fresh_noise", True), ("distill.teacher", "shots"), ("data.patches", True)], "data.fresh_noise draws the two shots of Noise2Noise afresh from whole clean images: it needs distill.teacher=shots and data.patches=false (not shots, True)"),
    ],
)  # fmt: skip
def test_distillation_configs_are_checked(overrides, message):
    with pytest.raises(UserError, match="^" + re.escape(message)):
        configlib.resolve("distill_demo", [(key.split("."), value) for key, value in overrides])


def test_distill_configs_train_the_student_at_full_resolution():
    cfg = configlib.resolve("distill_sidd", [(["data", "dir"], "x"), (["distill", "teacher"], "t")])
    assert (cfg.model.arch, cfg.model.base_ch, cfg.model.depth, cfg.train.pd, cfg.train.pd_pad) == ("student", 32, 3, 1, 0)
    assert (cfg.train.batch_size, cfg.data.crop, cfg.train.epochs) == (8, 120, 30)  # the release's crops and schedule


def test_distill_demo_is_the_shipped_students_recipe():
    cfg = configlib.resolve("distill_demo")
    assert (cfg.distill.teacher, cfg.model.depth, cfg.data.crop, cfg.train.batch_size) == ("demo", 3, 96, 8)
    assert cfg.train.epochs * cfg.train.steps_per_epoch == 1500


def test_distill_fresh_demo_learns_from_fresh_noisy_pairs_only():
    cfg = configlib.resolve("distill_fresh_demo")
    assert (cfg.distill.teacher, cfg.data.fresh_noise, cfg.data.patches, cfg.model.arch) == ("shots", True, False, "student")
    assert configlib.resolve("distill_demo").data.fresh_noise is False


def test_nbsn_distill_configs_train_the_release_student():
    sidd = configlib.resolve("distill_nbsn_sidd", [(["data", "dir"], "x"), (["distill", "teacher"], "t")])
    assert (sidd.model.arch, sidd.model.base_ch, sidd.model.depth, sidd.data.crop, sidd.optim.lr) == ("nbsn", 48, 5, 128, 1e-4)
    assert sidd.distill.recharge == [2, 3, 4, 5, 6]  # train_distill.py --h_set 2 3 4 5 6 --recharge
    demo = configlib.resolve("distill_nbsn_demo")
    assert (demo.model.arch, demo.model.base_ch, demo.model.depth, demo.distill.teacher) == ("nbsn", 16, 5, "demo")
    assert demo.distill.recharge == []  # its teacher is the shipped AM-BSN: one target
    assert demo.data.crop % 2**demo.model.depth == 0  # no padding inside the U-Net while training


@pytest.mark.parametrize("name,teacher,holes,message", [
    ("tmbsn_demo", None, [2, 3], "mixes a TM-BSN teacher's outputs; set distill.teacher"),
    ("distill_nbsn_sidd", "t", [2, 2], "distinct hole sizes, none negative"),
    ("distill_nbsn_sidd", "t", [-1], "distinct hole sizes, none negative"),
])  # fmt: skip
def test_recharge_needs_a_teacher_and_distinct_holes(name, teacher, holes, message):
    overrides = [(["data", "dir"], "x"), (["distill", "teacher"], teacher), (["distill", "recharge"], holes)]
    with pytest.raises(UserError, match=message):
        configlib.resolve(name, overrides)


def test_tmbsn_sidd_is_the_release_recipe():
    """train_tmbsn.py: batch 4 of 128 crops from 256 patches (stride 128), hole 5 without PD,
    Adam 1e-4 held 200k steps then a cosine to 1e-6 over 300k, 500k steps; C = 48, 5 blocks."""
    cfg = configlib.resolve("tmbsn_sidd", [(["data", "dir"], "x")])
    assert (cfg.model.arch, cfg.model.base_ch, cfg.model.blocks) == ("tmbsn", 48, 5)
    assert (cfg.data.patch_size, cfg.data.patch_stride, cfg.data.crop, cfg.train.batch_size) == (256, 128, 128, 4)
    assert (cfg.train.pd, cfg.train.pd_pad, cfg.train.hole, cfg.train.epochs * cfg.train.steps_per_epoch) == (1, 0, 5, 500_000)
    assert (cfg.optim.lr, cfg.optim.schedule, cfg.optim.hold_steps, cfg.optim.decay_steps, cfg.optim.final_lr) == (
        1e-4, "cosine", 200_000, 300_000, 1e-6,
    )  # fmt: skip
    assert configlib.resolve("tmbsn_demo").model.arch == "tmbsn"


@pytest.mark.parametrize(
    "overrides,message",
    [
        ([(["model", "arch"], "tmbsn"), (["train", "pd"], 1)], "train.hole is TM-BSN's"),
        ([(["train", "hole"], 5)], "train.hole is TM-BSN's"),
        ([(["optim", "schedule"], "linear")], "optim.schedule 'linear'"),
        ([(["model", "blocks"], 2)], "blocks"),
    ],
)
def test_tmbsn_settings_are_checked(overrides, message):
    with pytest.raises(UserError, match=message):
        configlib.resolve("sidd", [(["data", "dir"], "x"), *overrides])
