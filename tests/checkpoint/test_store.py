"""Checkpoints on disk (ambsn_jax.checkpoint.store): Orbax managers, workdirs and .pth files."""

from __future__ import annotations

import hashlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ambsn_jax.checkpoint import store
from ambsn_jax.checkpoint.meta import CheckpointMeta
from ambsn_jax.checkpoint import torch_port
from ambsn_jax.errors import UserError
from ambsn_jax.nets import registry
from ambsn_jax.nets.ambsn import AMBSNConfig
from ambsn_jax.nets.apbsn import APBSNConfig
from tests.helpers import image, numpy_sd, write_pth

CFG = APBSNConfig(base_ch=8, num_module=1)


def _meta(**fields) -> CheckpointMeta:
    return CheckpointMeta.for_network("apbsn", CFG, **({"train_pd": 4, "train_pd_pad": 1, "source": "test"} | fields))


def assert_same_params(a: dict, b: dict) -> None:
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(np.testing.assert_array_equal, a, b)


def test_params_of_is_the_pure_dict_of_the_parameters():
    model = registry.build("apbsn", CFG)
    params = store.params_of(model)
    assert params["head"]["kernel"].shape == (1, 1, 3, 8)
    np.testing.assert_array_equal(params["branch2"]["masked"]["kernel"], model.branch2.masked.kernel.get_value())
    assert len(jax.tree.leaves(params)) == len(jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_save_then_load_gives_the_parameters_and_metadata_back(tmp_path, rng):
    model = registry.build("apbsn", CFG, seed=3)
    params = store.params_of(model)
    store.save_params(tmp_path / "ck", params, _meta(), step=7)
    loaded = store.load_checkpoint(tmp_path / "ck")
    assert (loaded.path, loaded.step, loaded.meta) == (tmp_path / "ck", 7, _meta())
    assert_same_params(loaded.params, params)
    x = jnp.asarray(image(rng, 1, 10, 12))
    module = loaded.module()
    assert type(module) is registry.get("apbsn").network and module.config == CFG
    np.testing.assert_array_equal(np.asarray(module(x)), np.asarray(model(x)))
    assert {store.META, store.PARAMS} <= {p.name for p in (tmp_path / "ck" / "7").iterdir()}


def test_steps_latest_named_and_missing(tmp_path):
    a, b = (store.params_of(registry.build("apbsn", CFG, seed=s)) for s in (1, 2))
    store.save_params(tmp_path, a, _meta(note="first"), step=3)
    store.save_params(tmp_path, b, _meta(note="second"), step=8)
    latest = store.load_checkpoint(tmp_path)
    assert latest.step == 8 and latest.meta.note == "second"
    assert_same_params(latest.params, b)
    first = store.load_checkpoint(tmp_path, step=3)
    assert first.meta.note == "first"
    assert_same_params(first.params, a)
    with pytest.raises(UserError, match=r"no step 5; steps present: 3, 8"):
        store.load_checkpoint(tmp_path, step=5)


def test_a_training_workdir_loads_from_its_checkpoints_folder(tmp_path):
    params = store.params_of(registry.build("apbsn", CFG))
    store.save_params(tmp_path / store.WORKDIR_CHECKPOINTS, params, _meta())
    loaded = store.load_checkpoint(tmp_path)
    assert loaded.path == tmp_path / store.WORKDIR_CHECKPOINTS and loaded.meta == _meta()


def test_refusals_name_the_checkpoint(tmp_path):
    with pytest.raises(UserError, match="absent: no such checkpoint"):
        store.load_checkpoint(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="empty: no checkpoint in this directory"):
        store.load_checkpoint(tmp_path / "empty")
    # Metadata that describes another network than the parameters hold.
    params = store.params_of(registry.build("apbsn", CFG))
    wrong = CheckpointMeta.for_network("apbsn", APBSNConfig(base_ch=16, num_module=1), train_pd=5, train_pd_pad=2, source="x")
    store.save_params(tmp_path / "wrong", params, wrong)
    with pytest.raises(UserError, match=r"wrong \(step 0\): parameters unreadable or not those of apbsn"):
        store.load_checkpoint(tmp_path / "wrong")


def test_a_pth_loads_as_the_release_trained_it(official_state_dict, tmp_path):
    src = write_pth(tmp_path / "AMBSN.pth", official_state_dict(8))
    loaded = store.load_checkpoint(src)
    assert (loaded.path, loaded.step) == (src, None)
    assert loaded.meta == CheckpointMeta.for_release(
        "ambsn", AMBSNConfig(base_ch=8), source="AMBSN.pth", source_sha256=hashlib.sha256(src.read_bytes()).hexdigest()
    )
    want, _ = torch_port.params_from_state_dict(numpy_sd(official_state_dict(8)))
    assert_same_params(loaded.params, want)


def test_the_shipped_demo_checkpoint_is_a_0_1_0_checkpoint_at_the_release_pd():
    loaded = store.load_checkpoint(store.DEMO_CHECKPOINT)
    assert (loaded.meta.arch, loaded.meta.network_config(), loaded.step) == ("ambsn", AMBSNConfig(base_ch=16), 0)
    assert (loaded.meta.train_pd, loaded.meta.train_pd_pad, loaded.meta.source, loaded.meta.tool_version) == (5, 2, "demo", "0.1.0")
    assert loaded.params["head"]["kernel"].shape == (1, 1, 3, 16)
