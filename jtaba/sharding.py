"""Data parallelism over every device of every process: a 1-D mesh with axis ``"data"``.

Batch-major arrays are split over ``"data"`` along their sample axis (0 for (B, C, H, W), 1 for (T, B, C, H, W));
params are replicated. A host batch of any size B is padded (by repeating its last row) to a multiple of the global
device count before it goes on the mesh, and ``gather`` slices the padding away again: no sample is dropped. With
several processes, each one contributes only the rows its own devices hold (``jax.make_array_from_process_local_data``)
and ``gather`` returns the whole batch to every process (``multihost_utils.process_allgather``).
"""
from __future__ import annotations

from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

DATA = "data"


def data_mesh(devices=None) -> Mesh:
    """1-D mesh named ``"data"`` over ``devices`` (default: every device of every process, ``jax.devices()``)."""
    return Mesh(np.asarray(jax.devices() if devices is None else devices), (DATA,))


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Split the sample axis ``axis`` over ``"data"``; other axes are whole on every device."""
    return NamedSharding(mesh, P(*([None] * axis), DATA))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place a pytree of host or device arrays (identical on every process) fully replicated on ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def padded_size(n: int, mesh: Mesh) -> int:
    """Smallest multiple of the mesh's device count that is >= n."""
    return -(-n // mesh.size) * mesh.size


def process_rows(n_padded: int, mesh: Mesh) -> slice:
    """The contiguous rows [start, stop) of a padded batch that this process's devices hold."""
    idx = batch_sharding(mesh).addressable_devices_indices_map((n_padded,)).values()
    starts = sorted({i[0].start or 0 for i in idx})
    stops = sorted({n_padded if i[0].stop is None else i[0].stop for i in idx})
    if stops[-1] - starts[0] != len(starts) * (n_padded // mesh.size):
        raise ValueError("this process's devices do not hold a contiguous block of the batch; order the mesh "
                         "devices by process (the default data_mesh does)")
    return slice(starts[0], stops[-1])


def put_batch(x, mesh: Mesh, axis: int = 0, size: int | None = None) -> jax.Array:
    """Place the host batch ``x`` (every process passes the same whole batch, e.g. a memmap slice: only this
    process's rows are read) on ``mesh`` split along ``axis``, padded to ``size`` samples (default
    ``padded_size``; a fixed size for every batch of a run, last one included, avoids a recompile)."""
    n = x.shape[axis]
    size = padded_size(n, mesh) if size is None else size
    if size < n or size % mesh.size:
        raise ValueError(f"cannot pad {n} samples to {size}: need a multiple of {mesh.size} devices >= {n}")
    rows = process_rows(size, mesh)
    take = np.minimum(np.arange(rows.start, rows.stop), n - 1)  # padding repeats the last sample
    local = np.take(x, take, axis=axis)
    global_shape = x.shape[:axis] + (size,) + x.shape[axis + 1:]
    return jax.make_array_from_process_local_data(batch_sharding(mesh, axis), local, global_shape)


def gather(x: jax.Array, n: int | None = None, axis: int = 0) -> np.ndarray:
    """The whole array ``x`` as numpy on every process, cut to its first ``n`` samples along ``axis``."""
    if jax.process_count() > 1 and not x.is_fully_addressable:
        out = np.asarray(multihost_utils.process_allgather(x, tiled=True))
    else:
        out = np.asarray(x)
    return out if n is None else out[(slice(None),) * axis + (slice(0, n),)]
