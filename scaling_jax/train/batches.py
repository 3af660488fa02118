"""Host batches -> global jax.Arrays on the mesh; each process fills only the rows its devices hold."""
from __future__ import annotations

import jax
import numpy as np

from scaling_jax.data.arrays import ArrayDataset


def global_batch(ds: ArrayDataset, idx: np.ndarray, sharding) -> dict[str, jax.Array]:
    """A global jax.Array per column of rows `idx`; each process gathers only its devices' rows."""
    def column(name):
        col = ds.arrays[name]
        shape = (len(idx),) + col.shape[1:]
        return jax.make_array_from_callback(shape, sharding, lambda s: col[idx[s[0]]])
    return {k: column(k) for k in ds.arrays}


def place_batch(batch: dict[str, np.ndarray], sharding) -> dict[str, jax.Array]:
    """A batch every process holds in full, placed as global arrays."""
    return {k: jax.make_array_from_callback(v.shape, sharding, lambda s, v=v: v[s]) for k, v in batch.items()}
