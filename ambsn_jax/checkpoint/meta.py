"""Checkpoint metadata: one typed record, written by conversion and training alike.

It says which network the parameters belong to, how the weights were trained (the PD factor
and padding, which the default inference follows) and where they came from. 0.1.0 wrote a
looser dict (no PD, `trained_with` / `made_by` / `converted`); `from_json` still reads it,
knowing that every 0.1.0 checkpoint was trained or converted at the release's PD.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.version import __version__

# 0.1.0 names -> this record's.
_LEGACY_KEYS = {"trained_with": "source", "made_by": "note", "converted": "created"}


@dataclasses.dataclass(frozen=True)
class CheckpointMeta:
    arch: str  # a name of `registry.ARCHITECTURES`
    config: dict[str, Any]  # the network config's `to_dict()`, complete
    train_pd: int  # PD factor the weights were trained with (the release: 5)
    train_pd_pad: int  # PD padding they were trained with (the release: 2)
    source: str  # where the weights came from: a .pth file name, a training config's name
    source_sha256: str | None = None  # of the .pth converted
    created: str | None = None  # ISO time of conversion
    note: str | None = None  # free text, e.g. the command that made shipped weights
    ema_decay: float | None = None  # the weights served are a moving average of this decay; None: as trained
    # The default inference's self-ensemble: how many rotations / flips it averages
    # (`inference.release.ENSEMBLES`); None: one pass. JSON true / false read as 8 / 1.
    self_ensemble: int | None = None
    tool_version: str = __version__

    @classmethod
    def for_network(cls, arch: str, config: Any, **fields: Any) -> CheckpointMeta:
        """The record of a network of `arch` and its (typed) `config`; fields as the class's."""
        return cls(arch=arch, config=registry.network_config(arch, dataclasses.asdict(config)).to_dict(), **fields)

    @classmethod
    def for_release(cls, arch: str, config: Any, **fields: Any) -> CheckpointMeta:
        """The record of weights the release of `arch` trained (its PD factor and padding)."""
        record = registry.get(arch)
        return cls.for_network(
            arch, config, train_pd=record.release_train_pd, train_pd_pad=record.release_pd_pad, **fields
        )

    @property
    def architecture(self):
        return registry.get(self.arch)

    def network_config(self) -> Any:
        return registry.network_config(self.arch, self.config)

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: Any, where: str) -> CheckpointMeta:
        """The record of a checkpoint's JSON `data`; `where` (the checkpoint) names it in errors."""
        if not isinstance(data, dict):
            raise UserError(f"{where}: metadata is not a JSON object; not a checkpoint of this tool")
        data = {_LEGACY_KEYS.get(k, k): v for k, v in data.items()}
        arch = data.get("arch", "ambsn")  # 0.1.0's first checkpoints named no architecture
        if arch not in registry.ARCHITECTURES:
            known = ", ".join(registry.ARCHITECTURES)
            raise UserError(f"{where}: metadata names architecture {arch!r}, which is none of {known}")
        record = registry.get(arch)
        data = {"train_pd": record.release_train_pd, "train_pd_pad": record.release_pd_pad, "source": "", **data}
        fields = {f.name: f.type for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise UserError(f"{where}: metadata has unknown fields {', '.join(unknown)}; written by a newer version?")
        if not isinstance(data.get("config"), dict):
            raise UserError(f"{where}: metadata has no network config")
        ints = [k for k in ("train_pd", "train_pd_pad") if not isinstance(data[k], int) or isinstance(data[k], bool)]
        if ints or data["train_pd"] < 1 or data["train_pd_pad"] < 0:
            raise UserError(f"{where}: metadata train_pd / train_pd_pad must be integers (>= 1, >= 0)")
        if isinstance(data.get("self_ensemble"), bool):
            data["self_ensemble"] = 8 if data["self_ensemble"] else 1
        if not isinstance(data.get("self_ensemble", 1), int) or data.get("self_ensemble", 1) < 1:
            raise UserError(f"{where}: metadata self_ensemble must be a count of orientations (1, 2, 4 or 8)")
        try:
            config = registry.network_config(arch, data["config"]).to_dict()
        except UserError as e:
            raise UserError(f"{where}: metadata {e}") from e
        return cls(**{**data, "arch": arch, "config": config})
