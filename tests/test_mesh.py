"""Devices for data-parallel training (ambsn_jax.mesh); several devices: tests/train/test_loop.py;
joining a multi-process run: tests/test_distributed.py."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from ambsn_jax import mesh as meshlib
from ambsn_jax.errors import UserError


def test_shard_batch_splits_the_batch_along_data():
    mesh = meshlib.make_mesh(4)
    assert mesh.axis_names == (meshlib.DATA_AXIS,) and mesh.devices.size == jax.device_count()
    local = np.arange(4 * 3, dtype=np.float32).reshape(4, 3)
    batch = meshlib.shard_batch(local, mesh)
    np.testing.assert_array_equal(np.asarray(batch), local)
    assert batch.sharding == meshlib.batch_sharding(mesh)
    assert meshlib.replicated(mesh).is_fully_replicated


def test_a_batch_that_does_not_divide_is_refused(monkeypatch):
    monkeypatch.setattr(jax, "device_count", lambda: 4)
    with pytest.raises(UserError, match="batch size 6 does not divide by the 4 devices; pick a multiple of 4"):
        meshlib.make_mesh(6)

