"""Training configs: YAML data shipped in `ambsn_jax/configs/`, checked against the typed schema below.

A config file may name a `base` config and give only what differs from it. Every value can
be overridden from the command line as `--set section.key=value` (the value is parsed as
YAML: `--set optim.lr=1e-4`, `--set val.dir=null`). Unknown or mistyped keys are a
UserError naming the valid ones. The resolved config is written into the workdir.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from ambsn_jax.nets import registry
from ambsn_jax.ops.precision import PRECISIONS
from ambsn_jax.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
RESOLVED_NAME = "config.yaml"


class _Loader(yaml.SafeLoader):
    """YAML as people write it: `1e-4` is a float (PyYAML's YAML 1.1 makes it a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?(?:\.[\d_]*)?[eE][-+]?\d+$"),
    list("-+0123456789."),
)


@dataclasses.dataclass(frozen=True)
class ModelSection:
    arch: str  # a name of `ambsn_jax.nets.registry`: "ambsn", "apbsn", "mmbsn", "student", "tmbsn"
    base_ch: int  # network width C; the releases' is 128
    depth: int | None  # the student's levels (times it halves the resolution); null: the network's default
    init: str | None  # fine-tune: start from this checkpoint (Orbax dir, workdir or .pth) of the same network
    blocks: int | None = None  # TM-BSN's residual-in-residual blocks (and residual blocks in each); null: the release's 5


@dataclasses.dataclass(frozen=True)
class DataSection:
    dir: str | None  # SIDD_Medium_Srgb (its noisy files), any folder of images, or "demo"
    patches: bool  # cut the images into patches first, as the release does
    patch_size: int
    patch_stride: int
    patch_dir: str | None  # where patches go; null: <workdir>/patches
    crop: int  # training crop side; a multiple of train.pd
    workers: int  # Grain worker processes (0: read in the training process)
    skip_bad: bool  # train on the good images only, warning about the bad ones (else refuse)
    fresh_noise: bool  # distill.teacher=shots: every crop pair noised afresh from the scene's clean image (`camera_noise`)


@dataclasses.dataclass(frozen=True)
class TrainSection:
    batch_size: int  # global: split over all devices of all hosts
    pd: int  # pixel-shuffle factor of the training forward
    pd_pad: int
    pd_shuffle: bool  # the release's random sub-image order (off in its recipe)
    epochs: int
    steps_per_epoch: int | None  # null: training images // batch_size
    max_steps: int | None  # stop early (total steps still set the schedule)
    accum_steps: int  # the batch runs as this many micro-batches, gradients summed: same step, less memory
    precision: str | None  # convolutions in highest, tf32 or bf16; null: the platform's default
    profile_steps: list[int] | None  # [a, b]: a jax.profiler trace of steps a..b in <workdir>/profile
    skip_nonfinite: bool  # a step with a non-finite loss, gradient or update is not applied (else training stops)
    winograd: bool  # 3x3 / 5x5 convolutions by Winograd's algorithm on CPUs (false: XLA's everywhere)
    hole: int | None = None  # TM-BSN's hole size in the training forward (its release: 5); null: a network without one


@dataclasses.dataclass(frozen=True)
class OptimSection:
    lr: float
    b1: float
    b2: float
    decay_every_epochs: int  # lr x decay_rate every this many epochs
    decay_rate: float
    warmup_steps: int  # linear warmup from 0; 0: none
    grad_clip: float | None  # global-norm clipping; null: none
    ema_decay: float | None  # exponential moving average of the weights, validated and served; null: none
    # Defaults for code that builds the section itself; config files name every key.
    schedule: str = "step"  # "step" (x decay_rate every decay_every_epochs) or "cosine" (TM-BSN's: hold, then cosine)
    hold_steps: int = 0  # cosine: steps at lr before the decay
    decay_steps: int = 0  # cosine: steps of the decay from lr to final_lr, which is kept after
    final_lr: float = 0.0  # cosine: the lr the decay ends at


@dataclasses.dataclass(frozen=True)
class ValSection:
    dir: str | None  # folder of SIDD validation .mat files, or "demo"; null: no validation
    blocks_per_image: int | None  # validate on the first blocks of every image; null: all
    batch_size: int  # blocks per device per inference call


@dataclasses.dataclass(frozen=True)
class CheckpointSection:
    every: int | None  # steps between checkpoints, each validated; null: once per epoch
    keep: int  # latest checkpoints kept, besides the best by validation PSNR


@dataclasses.dataclass(frozen=True)
class LogSection:
    every: int  # steps between metrics.jsonl / TensorBoard lines
    images: int  # validation blocks shown in TensorBoard (noisy | denoised | clean) at each validation


@dataclasses.dataclass(frozen=True)
class DistillSection:
    teacher: str | None  # blind-spot checkpoint (Orbax dir, workdir or .pth; "demo": the shipped demo weights) whose default inference the student learns; "shots": the other noisy shot of each scene (Noise2Noise); null: self-supervised training
    targets_dir: str | None  # where the teacher's outputs of the training images are kept; null: <workdir>/teacher
    recharge: list[int]  # TM-BSN teacher's hole sizes: its outputs at each, mixed by the release's Recharger (train/recharge.py); []: its default inference alone


@dataclasses.dataclass(frozen=True)
class Config:
    name: str
    seed: int
    model: ModelSection
    data: DataSection
    train: TrainSection
    optim: OptimSection
    val: ValSection
    checkpoint: CheckpointSection
    log: LogSection
    distill: DistillSection

    def network_fields(self) -> dict[str, Any]:
        """The network config fields the training config sets (the others: the network's defaults)."""
        optional = {k: v for k, v in (("depth", self.model.depth), ("blocks", self.model.blocks)) if v is not None}
        return {"base_ch": self.model.base_ch, **optional}

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_POSITIVE = (
    "model.base_ch", "data.patch_size", "data.patch_stride", "data.crop", "train.batch_size", "train.pd",
    "train.epochs", "train.steps_per_epoch", "train.max_steps", "optim.lr", "optim.decay_every_epochs",
    "val.blocks_per_image", "val.batch_size", "checkpoint.every", "checkpoint.keep", "log.every",
    "train.accum_steps",
)  # fmt: skip
_NON_NEGATIVE = ("data.workers", "train.pd_pad", "optim.warmup_steps", "log.images", "optim.hold_steps", "optim.final_lr")
SCHEDULES = ("step", "cosine")

# Keys a rerun in the same workdir may change: they do not alter the trained numbers.
# The two skip switches are what a run stopped by bad data or a NaN is rerun with.
RESUMABLE_CHANGES = (
    "train.max_steps", "train.profile_steps", "checkpoint.", "log.", "val.", "train.skip_nonfinite", "data.skip_bad",
)  # fmt: skip


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.load(path.read_text(), Loader=_Loader)
    except OSError as e:
        raise UserError(f"{path}: cannot read it ({e.strerror})") from e
    except yaml.YAMLError as e:
        raise UserError(f"{path}: not valid YAML ({e})") from e
    if not isinstance(data, dict):
        raise UserError(f"{path}: must hold a mapping of config sections")
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in update.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def load_yaml_tree(name_or_path: str) -> dict[str, Any]:
    """The raw config tree of the shipped config `name` (or a .yaml path), its bases merged under it."""
    path = Path(name_or_path)
    if path.suffix not in (".yaml", ".yml"):
        path = CONFIG_DIR / f"{name_or_path}.yaml"
        if not path.is_file():
            known = ", ".join(sorted(p.stem for p in CONFIG_DIR.glob("*.yaml")))
            raise UserError(f"no config named {name_or_path!r}; known configs: {known}")
    tree = _read_yaml(path)
    tree.setdefault("name", path.stem)
    base = tree.pop("base", None)
    return _merge(load_yaml_tree(base), tree) if base else tree


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f, hint in typing.get_type_hints(cls).items():
        if dataclasses.is_dataclass(hint):
            out += _keys(hint, f"{prefix}{f}.")
        else:
            out.append(prefix + f)
    return out


def _typed(value: Any, hint: Any, key: str) -> Any:
    allowed = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value is None and type(None) in allowed:
        return None
    for t in allowed:
        if typing.get_origin(t) is list:
            (item,) = typing.get_args(t)
            if isinstance(value, list):
                return [_typed(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
            continue
        # bool is an int to Python, never to a config; an int is a fine float.
        if t is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        if t is not type(None) and isinstance(value, t) and not (t is int and isinstance(value, bool)):
            return value
    names = " or ".join("null" if t is type(None) else getattr(t, "__name__", str(t)) for t in allowed)
    raise UserError(f"config key {key}: {value!r} is not {names}")


def _build(cls: type, tree: Any, prefix: str) -> Any:
    if not isinstance(tree, dict):
        raise UserError(f"config section {prefix.rstrip('.') or '(top)'} must be a mapping, not {tree!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(tree) - set(hints))
    if unknown:
        raise UserError(
            f"unknown config key {prefix}{unknown[0]}; valid keys: {', '.join(_keys(Config))}"
        )
    missing = sorted(set(hints) - set(tree))
    if missing:
        raise UserError(f"config lacks {', '.join(prefix + m for m in missing)}")
    values = {}
    for key, hint in hints.items():
        if dataclasses.is_dataclass(hint):
            values[key] = _build(hint, tree[key], f"{prefix}{key}.")
        else:
            values[key] = _typed(tree[key], hint, prefix + key)
    return cls(**values)


def parse_override(item: str) -> tuple[list[str], Any]:
    """`section.key=value` -> (['section', 'key'], YAML-parsed value)."""
    key, sep, text = item.partition("=")
    if not sep or not key.strip():
        raise UserError(f"--set {item!r}: expected key=value, e.g. --set optim.lr=1e-4")
    try:
        value = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as e:
        raise UserError(f"--set {item!r}: the value is not valid YAML ({e})") from e
    return key.strip().split("."), value


def apply_overrides(tree: dict[str, Any], overrides: Iterable[tuple[list[str], Any]]) -> dict[str, Any]:
    valid = _keys(Config)
    for path, value in overrides:
        dotted = ".".join(path)
        if dotted not in valid:
            raise UserError(f"unknown config key {dotted}; valid keys: {', '.join(valid)}")
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _check_recharge(distill: DistillSection) -> None:
    holes = distill.recharge
    if not holes:
        return
    if distill.teacher is None:
        raise UserError(f"distill.recharge {holes}: mixes a TM-BSN teacher's outputs; set distill.teacher to one")
    if min(holes) < 0 or len(set(holes)) != len(holes):
        raise UserError(f"distill.recharge {holes}: distinct hole sizes, none negative (the release: [2, 3, 4, 5, 6])")


def _check_fresh_noise(cfg: Config) -> None:
    if cfg.data.fresh_noise and (cfg.distill.teacher != "shots" or cfg.data.patches):
        raise UserError(
            "data.fresh_noise draws the two shots of Noise2Noise afresh from whole clean images: "
            f"it needs distill.teacher=shots and data.patches=false (not {cfg.distill.teacher}, {cfg.data.patches})"
        )


def check_values(cfg: Config) -> Config:
    """Checks between values that the types alone do not catch."""
    if cfg.model.arch not in registry.ARCHITECTURES:
        raise UserError(f"model.arch {cfg.model.arch!r}: must be one of {', '.join(registry.ARCHITECTURES)}")
    record = registry.get(cfg.model.arch)
    if cfg.model.depth is not None and record.blind_spot:
        raise UserError(f"model.depth is the student's; {record.display_name} has none (set it to null)")
    registry.network_config(cfg.model.arch, cfg.network_fields())
    if cfg.distill.teacher is not None and record.blind_spot:
        raise UserError(
            f"distill.teacher is set, but model.arch {cfg.model.arch} is a blind-spot network: distillation "
            "trains the student (--set model.arch=student, or use --config distill_demo / distill_sidd)"
        )
    if cfg.distill.teacher is None and not record.blind_spot:
        raise UserError(
            f"the {record.display_name} learns from a teacher: --set distill.teacher=CKPT "
            "(a checkpoint of AM-BSN, AP-BSN or MM-BSN: Orbax dir, training workdir or .pth)"
        )
    _check_recharge(cfg.distill)
    _check_fresh_noise(cfg)
    if not record.blind_spot and (cfg.train.pd, cfg.train.pd_pad) != (1, 0):
        raise UserError(
            f"the {record.display_name} sees whole images: train.pd must be 1 and train.pd_pad 0, "
            f"not {cfg.train.pd} and {cfg.train.pd_pad}"
        )
    if ("hole" in record.release_inference) != (cfg.train.hole is not None):
        raise UserError(
            f"train.hole is TM-BSN's hole size (its release trains at 5): set it for TM-BSN and only for it "
            f"(model.arch {cfg.model.arch}, train.hole {cfg.train.hole})"
        )
    if cfg.train.hole is not None and cfg.train.hole < 0:
        raise UserError(f"train.hole {cfg.train.hole}: must not be negative")
    if cfg.optim.schedule not in SCHEDULES:
        raise UserError(f"optim.schedule {cfg.optim.schedule!r}: one of {', '.join(SCHEDULES)}")
    if cfg.optim.schedule == "cosine" and cfg.optim.decay_steps < 1:
        raise UserError(f"optim.decay_steps {cfg.optim.decay_steps}: the cosine schedule needs at least 1")
    if cfg.data.crop % cfg.train.pd:
        raise UserError(f"data.crop {cfg.data.crop} must be a multiple of train.pd {cfg.train.pd}")
    if cfg.data.dir is None:
        raise UserError("no training data: pass --data-dir (SIDD_Medium_Srgb or a folder of noisy images)")
    if cfg.train.batch_size % cfg.train.accum_steps:
        raise UserError(
            f"train.batch_size {cfg.train.batch_size} does not divide into train.accum_steps {cfg.train.accum_steps} micro-batches"
        )
    if cfg.train.precision is not None and cfg.train.precision not in PRECISIONS:
        raise UserError(f"train.precision {cfg.train.precision!r}: one of {', '.join(PRECISIONS)}, or null")
    if cfg.optim.ema_decay is not None and not 0.0 < cfg.optim.ema_decay < 1.0:
        raise UserError(f"optim.ema_decay {cfg.optim.ema_decay}: must lie strictly between 0 and 1 (or null)")
    profile = cfg.train.profile_steps
    if profile is not None and (len(profile) != 2 or not 1 <= profile[0] <= profile[1]):
        raise UserError(f"train.profile_steps {profile}: must be [first, last] steps, 1 <= first <= last")
    flat = _flatten(cfg.to_dict())
    for key in _POSITIVE:
        if flat[key] is not None and flat[key] <= 0:
            raise UserError(f"config key {key}: {flat[key]} must be positive")
    for key in _NON_NEGATIVE:
        if flat[key] < 0:
            raise UserError(f"config key {key}: {flat[key]} must not be negative")
    return cfg


def resolve(name: str, overrides: Iterable[tuple[list[str], Any]] = ()) -> Config:
    """The config `name` (see `load_yaml_tree`) with `overrides` applied, typed and checked."""
    tree = apply_overrides(load_yaml_tree(name), overrides)
    return check_values(_build(Config, tree, ""))


def _flatten(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        out |= _flatten(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value}
    return out


def save_resolved(cfg: Config, workdir: Path, write: bool = True) -> None:
    """Writes `cfg` to the workdir (if `write`: one host writes, all check); refuses a
    workdir whose earlier run trained differently."""
    path = workdir / RESOLVED_NAME
    if path.is_file():
        old, new = _flatten(_read_yaml(path)), _flatten(cfg.to_dict())
        changed = [k for k in sorted(old.keys() | new.keys())
                   if old.get(k) != new.get(k) and not k.startswith(RESUMABLE_CHANGES)]  # fmt: skip
        if changed:
            diffs = "; ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
            raise UserError(
                f"{workdir}: holds a run with another config ({diffs}); resume it with the same "
                "settings, or pass a new --workdir"
            )
    if write:
        workdir.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
