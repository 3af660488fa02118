"""Deterministic, resumable batch order: the batch at step s depends only on (seed, s)."""
from __future__ import annotations

import functools

import numpy as np

from scaling_jax.errors import ConfigError, DataError


@functools.lru_cache(maxsize=4)
def _permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, epoch]).permutation(n)


def batch_indices(step: int, batch_size: int, n_examples: int, seed: int) -> np.ndarray:
    """Example indices of global batch `step`: a fresh permutation per epoch, no state to save.

    Global position g = step * batch_size + i reads example perm(seed, g // n)[g % n], so a resumed
    run, another mesh or another process count all see the same batches (the checkpoint only needs
    the step). Epoch boundaries fall inside a batch when n is not a multiple of batch_size.
    """
    if n_examples <= 0:
        raise DataError("cannot sample from an empty dataset")
    g = step * batch_size + np.arange(batch_size)
    epochs, offsets = np.divmod(g, n_examples)
    out = np.empty(batch_size, np.int64)
    for e in np.unique(epochs):
        sel = epochs == e
        out[sel] = _permutation(seed, int(e), n_examples)[offsets[sel]]
    return out


def process_slice(batch_size: int, process_index: int, process_count: int) -> slice:
    """Rows of the global batch that one process loads (contiguous, equal shares)."""
    if batch_size % process_count:
        raise ConfigError(f"global batch {batch_size} does not split over {process_count} processes")
    per = batch_size // process_count
    return slice(process_index * per, (process_index + 1) * per)
