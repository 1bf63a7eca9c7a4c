"""Every network of the family, one `Architecture` record each; the one place that builds them.

Adding a network is one module (its Flax network, config, key map and its record) plus one
entry in `ARCHITECTURES`; its PyTorch twin for verification lives in `convert/reference.py`. Whatever depends on the architecture (conversion,
default inference, training, export) asks the record, never the name.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flax import nnx

from ambsn_jax.errors import UserError
from ambsn_jax.nets import ambsn, apbsn, mmbsn, nbsn, student, tmbsn
from ambsn_jax.nets.architecture import Architecture

ARCHITECTURES: dict[str, Architecture] = {
    a.name: a
    for a in (
        ambsn.ARCHITECTURE, apbsn.ARCHITECTURE, mmbsn.ARCHITECTURE, student.ARCHITECTURE, tmbsn.ARCHITECTURE,
        nbsn.ARCHITECTURE,
    )  # fmt: skip
}


def get(name: str) -> Architecture:
    """The record of `name`; a UserError listing the known ones otherwise."""
    if name not in ARCHITECTURES:
        raise UserError(f"unknown architecture {name!r}; known: {', '.join(ARCHITECTURES)}")
    return ARCHITECTURES[name]


def of_config(config: Any) -> Architecture:
    """The record whose config class `config` is an instance of."""
    return next(a for a in ARCHITECTURES.values() if isinstance(config, a.config))


def network_config(arch: str, config: Mapping[str, Any]) -> Any:
    """The typed config of `arch` from its `to_dict()` (missing keys: the release's values)."""
    record = get(arch)
    try:
        return record.config(**config)
    except (TypeError, ValueError) as e:
        raise UserError(f"{record.display_name} config {dict(config)}: {e}") from e


def build(arch: str, config: Mapping[str, Any] | Any, seed: int = 0) -> nnx.Module:
    """A freshly initialised network `arch` of `config` (its typed config or a `to_dict()`).

    Wrap it in `nnx.eval_shape` where only the structure is needed: a random init of the
    real width costs seconds of compiling.
    """
    typed = config if isinstance(config, get(arch).config) else network_config(arch, config)
    return get(arch).network(typed, rngs=nnx.Rngs(seed))


def graphdef(arch: str, config: Mapping[str, Any] | Any) -> nnx.GraphDef:
    """The structure of network `arch` of `config`, without computing any weight."""
    return nnx.graphdef(nnx.eval_shape(lambda: build(arch, config)))
