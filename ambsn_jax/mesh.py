"""Devices for data-parallel training: one `data` mesh axis over every device of every host.

The batch is split along `data`, the parameters and optimizer state are replicated, and XLA
inserts the gradient all-reduce: the jitted step is the same function on one CPU or many GPUs.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from ambsn_jax.errors import UserError

DATA_AXIS = "data"


def maybe_initialize_distributed() -> None:
    """Joins a multi-host run when JAX_COORDINATOR_ADDRESS is set; else a no-op.

    Every host runs the same command with JAX_COORDINATOR_ADDRESS (host:port of process 0),
    JAX_NUM_PROCESSES and its own JAX_PROCESS_ID. JAX itself reads only the address; left
    unset, the other two come from the cluster JAX detects (Slurm, Open MPI, ...).
    """
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if not address:
        return
    counts = {}
    for name, arg in [("JAX_NUM_PROCESSES", "num_processes"), ("JAX_PROCESS_ID", "process_id")]:
        if value := os.environ.get(name):
            if not value.isdigit():
                raise UserError(f"{name}={value!r}: must be a non-negative integer")
            counts[arg] = int(value)
    jax.distributed.initialize(address, **counts)


def make_mesh(global_batch: int) -> Mesh:
    """A 1-D mesh over all devices; the global batch must split evenly across them."""
    n = jax.device_count()
    if global_batch % n:
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
