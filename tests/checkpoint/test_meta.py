"""Checkpoint metadata (ambsn_jax.checkpoint.meta): one typed record, 0.1.0's dicts read too,
anything else refused with one error naming the checkpoint."""

from __future__ import annotations

import json

import pytest

from ambsn_jax import __version__
from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.nets.ambsn import AMBSNConfig
from ambsn_jax.nets.mmbsn import MMBSNConfig

WHERE = "/ckpts/run (step 3)"
# What 0.1.0 wrote, as the shipped demo checkpoint holds it.
LEGACY = {
    "arch": "ambsn",
    "config": {"in_ch": 3, "out_ch": 3, "base_ch": 16, "dcl1_num": 2, "dcl2_num": 7, "local_mask": "central", "global_mask": "x"},
    "tool_version": "0.1.0",
    "trained_with": "demo",
    "made_by": "python train.py --config demo",
}


def test_round_trip_through_json():
    meta = CheckpointMeta.for_network(
        "mmbsn", MMBSNConfig(base_ch=8, mask_type="a45_o"), train_pd=4, train_pd_pad=1, source="config x", note="n",
        self_ensemble=4,
    )
    data = json.loads(json.dumps(meta.to_json()))
    assert "created" not in data and "source_sha256" not in data  # unset fields are left out
    assert data["config"] == MMBSNConfig(base_ch=8, mask_type="a45_o").to_dict()
    assert data["tool_version"] == __version__
    back = CheckpointMeta.from_json(data, WHERE)
    assert back == meta
    assert back.network_config() == MMBSNConfig(base_ch=8, mask_type="a45_o")
    assert back.architecture is registry.get("mmbsn")


def test_for_release_records_the_release_pd():
    meta = CheckpointMeta.for_release("ambsn", AMBSNConfig(base_ch=8), source="AMBSN.pth", source_sha256="ab")
    assert (meta.train_pd, meta.train_pd_pad, meta.source, meta.source_sha256) == (5, 2, "AMBSN.pth", "ab")
    assert meta.config == AMBSNConfig(base_ch=8).to_dict()


def test_a_0_1_0_dict_reads_with_the_release_pd():
    meta = CheckpointMeta.from_json(LEGACY, WHERE)
    assert (meta.arch, meta.train_pd, meta.train_pd_pad) == ("ambsn", 5, 2)
    assert (meta.source, meta.note, meta.tool_version) == ("demo", "python train.py --config demo", "0.1.0")
    assert meta.network_config() == AMBSNConfig(base_ch=16)
    assert meta.self_ensemble is None  # older metadata names no self-ensemble: one pass
    assert CheckpointMeta.from_json({**LEGACY, "self_ensemble": True}, WHERE).self_ensemble == 8
    assert CheckpointMeta.from_json({**LEGACY, "self_ensemble": False}, WHERE).self_ensemble == 1
    # 0.1.0's first checkpoints named no architecture, and conversions said `converted`.
    older = {"config": {"base_ch": 8}, "converted": "2025-01-01T00:00:00+00:00"}
    meta = CheckpointMeta.from_json(older, WHERE)
    assert (meta.arch, meta.created, meta.config) == ("ambsn", "2025-01-01T00:00:00+00:00", AMBSNConfig(base_ch=8).to_dict())


MALFORMED = {
    "not a dict": (["arch", "ambsn"], "metadata is not a JSON object"),
    "unknown arch": ({**LEGACY, "arch": "unet"}, "metadata names architecture 'unet', which is none of ambsn, apbsn, mmbsn"),
    "unknown field": ({**LEGACY, "colour": "red"}, "metadata has unknown fields colour"),
    "no config": ({"arch": "ambsn"}, "metadata has no network config"),
    "config not a dict": ({**LEGACY, "config": 16}, "metadata has no network config"),
    "bad config": ({**LEGACY, "config": {"width": 16}}, "metadata AM-BSN config {'width': 16}"),
    "bad mm mask": ({"arch": "mmbsn", "config": {"mask_type": "o_q"}}, "metadata MM-BSN config"),
    "train_pd a string": ({**LEGACY, "train_pd": "5"}, "train_pd / train_pd_pad must be integers"),
    "train_pd a bool": ({**LEGACY, "train_pd": True}, "train_pd / train_pd_pad must be integers"),
    "train_pd zero": ({**LEGACY, "train_pd": 0}, "train_pd / train_pd_pad must be integers (>= 1, >= 0)"),
    "negative pad": ({**LEGACY, "train_pd_pad": -1}, "train_pd / train_pd_pad must be integers"),
    "self_ensemble a string": ({**LEGACY, "self_ensemble": "4"}, "self_ensemble must be a count of orientations"),
    "self_ensemble zero": ({**LEGACY, "self_ensemble": 0}, "self_ensemble must be a count of orientations"),
}


@pytest.mark.parametrize("case", MALFORMED)
def test_malformed_metadata_is_one_user_error_naming_the_checkpoint(case):
    data, fragment = MALFORMED[case]
    with pytest.raises(UserError) as error:
        CheckpointMeta.from_json(data, WHERE)
    message = str(error.value)
    assert message.startswith(f"{WHERE}: ") and fragment in message and "\n" not in message


def test_for_network_refuses_a_config_of_another_architecture():
    with pytest.raises(UserError, match="AP-BSN config"):
        CheckpointMeta.for_network("apbsn", MMBSNConfig(base_ch=8), train_pd=5, train_pd_pad=2, source="x")
