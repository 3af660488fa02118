"""Host batches -> global jax.Arrays on the mesh; each process reads and fills only the rows its devices hold."""
from __future__ import annotations

import jax
import numpy as np


def process_rows(sharding, batch_size: int) -> np.ndarray:
    """Rows of a global batch of `batch_size` that this process's devices hold (sorted, unique):
    the union of the row ranges `sharding` gives its addressable devices."""
    rows: set[int] = set()
    for index in sharding.addressable_devices_indices_map((batch_size,)).values():
        rows.update(range(*index[0].indices(batch_size)))
    return np.asarray(sorted(rows), np.int64)


def host_rows(ds, idx: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
    """This process's part of the global batch of examples `idx`: `ds.take` of rows `rows` only."""
    return ds.take(idx[rows])


def place_rows(host: dict[str, np.ndarray], rows: np.ndarray, batch_size: int, sharding) -> dict[str, jax.Array]:
    """Global arrays of leading dim `batch_size` from this process's rows (`host[k][j]` is global row
    `rows[j]`); each device gets its slice, which lies inside `rows` by construction."""
    def column(col):
        def cb(index):
            start, stop, _ = index[0].indices(batch_size)
            j = int(np.searchsorted(rows, start))
            return col[j:j + stop - start]
        return jax.make_array_from_callback((batch_size,) + col.shape[1:], sharding, cb)
    return {k: column(v) for k, v in host.items()}


def global_batch(ds, idx: np.ndarray, sharding) -> dict[str, jax.Array]:
    """A global jax.Array per column of examples `idx`; each process reads only its devices' rows."""
    rows = process_rows(sharding, len(idx))
    return place_rows(host_rows(ds, idx, rows), rows, len(idx), sharding)


def place_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """A batch every process holds in full, placed as global arrays."""
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda s, v=v: v[s]) for k, v in batch.items()}
