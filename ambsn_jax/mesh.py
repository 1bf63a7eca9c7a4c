"""Devices for data-parallel training and evaluation: one `data` mesh axis over the devices.

Training's batch is split along `data` over every device of every host, the parameters and
optimizer state are replicated, and XLA inserts the gradient all-reduce: the jitted step is the
same function on one CPU or many GPUs. Evaluation splits its blocks the same way (`make_mesh`
over all hosts, results gathered with `gather`), or, where each host works on its own files,
over this host's devices alone (`local_mesh`).
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ambsn_jax.errors import UserError

DATA_AXIS = "data"


def make_mesh(global_batch: int | None = None) -> Mesh:
    """A 1-D mesh over all devices of all hosts; a `global_batch` must split evenly across them."""
    n = jax.device_count()
    if global_batch is not None and global_batch % n:
        raise UserError(
            f"batch size {global_batch} does not divide by the {n} devices; "
            f"pick a multiple of {n} (--set train.batch_size=...)"
        )
    # Auto: XLA propagates the shardings through the step from its inputs (GSPMD), so the
    # step stays the plain single-device function.
    return jax.make_mesh((n,), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def shard_batch(local: np.ndarray, mesh: Mesh) -> jax.Array:
    """This host's rows of the batch -> one global array split over the `data` axis."""
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def local_mesh() -> Mesh:
    """A 1-D mesh over this host's devices: for work that each host does on its own share."""
    devices = jax.local_devices()
    return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,), devices=devices)


def gather(x: jax.Array) -> np.ndarray:
    """The whole of `x` on this host: its own rows of a mesh of this host, or every host's rows
    (a collective: every process of the run must call it) of a mesh over all hosts."""
    if x.is_fully_addressable:
        return np.asarray(x)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def my_share(count: int) -> range:
    """The items of `count` (files, images) that this process takes: every P-th from its index."""
    return range(jax.process_index(), count, jax.process_count())


def total(value: int) -> int:
    """The sum of `value` over all processes (a collective: every process must call it)."""
    if jax.process_count() == 1:
        return value
    from jax.experimental import multihost_utils

    return int(np.sum(multihost_utils.process_allgather(np.asarray(value))))
