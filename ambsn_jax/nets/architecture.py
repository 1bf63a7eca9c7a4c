"""The record that says everything about one network of the family (see `registry`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

from flax import nnx

from ambsn_jax.nets.keymap import KeyMap, MaskMap, StateDict


@dataclasses.dataclass(frozen=True)
class Architecture:
    """One network: how to build it, how the release's checkpoints map onto it, how it is run.

    `config` is the network's frozen config dataclass (defaults: the release's, `to_dict()`
    for metadata). The port fields read the release's state dicts (the release's own PyTorch
    network, its twin, is chosen by `name` in `convert.reference`, which imports torch).
    """

    name: str  # as checkpoint metadata, configs and --arch spell it
    display_name: str  # as people write it, for messages
    network: type[nnx.Module]
    config: type
    signature: str  # a state-dict key pattern that only this network's checkpoints have
    config_from_state_dict: Callable[[StateDict], Any]
    key_map: Callable[[Any], KeyMap]
    mask_map: Callable[[Any], MaskMap]
    release_tta: bool  # the release's inference fuses the PD-2 pass with a PD-`train_pd` pass
    release_config: str  # the shipped training config of the release's recipe (ambsn_jax/configs)
    release_train_pd: int = 5  # PD factor the release trains with (its pd_a)
    release_pd_pad: int = 2
    # False for a network that sees every pixel (the distilled student): its default inference
    # is one pass of the network, without PD, fusion or R3.
    blind_spot: bool = True
    # Fields of `inference.release.InferenceConfig` that the release's own test script sets
    # over the PD defaults above (TM-BSN: one reflect-padded pass at its hole size, no R3).
    release_inference: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # The release saves and loads a bare state dict (no container, no `bsn.` prefix).
    bare_state_dict: bool = False
