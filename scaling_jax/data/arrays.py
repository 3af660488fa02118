"""`ArrayDataset`: tokenized examples as equal-length numpy arrays, batched by index."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from scaling_jax.data.sampler import batch_indices


@dataclass
class ArrayDataset:
    """Columns (`input_ids`, `attention_mask`, `labels`, ...) with a shared leading dim; `meta`
    keeps host-only per-example data (words, word ids) for decoding predictions."""

    arrays: dict[str, np.ndarray]
    meta: Any = None

    def __post_init__(self):
        sizes = {k: len(v) for k, v in self.arrays.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"columns differ in length: {sizes}")

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[idx] for k, v in self.arrays.items()}

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        return self.take(batch_indices(step, batch_size, len(self), seed))

    def eval_batches(self, batch_size: int, max_batches: int = 0) -> Iterator[tuple[np.ndarray, dict]]:
        return eval_batches(self, batch_size, max_batches)


def eval_batches(ds, batch_size: int, max_batches: int = 0) -> Iterator[tuple[np.ndarray, dict]]:
    """In-order batches of any dataset with `take` and `len`, padded to `batch_size` with empty
    rows (attention 0, labels -100), so shapes never change and every real example is seen once.
    Yields (indices, batch)."""
    n = len(ds)
    count = 0
    for start in range(0, n, batch_size):
        if max_batches and count >= max_batches:
            return
        idx = np.arange(start, min(start + batch_size, n))
        batch = ds.take(idx)
        pad = batch_size - len(idx)
        if pad:
            batch = {k: np.concatenate([v, _empty_rows(k, v, pad)]) for k, v in batch.items()}
        count += 1
        yield idx, batch


def _empty_rows(key: str, v: np.ndarray, n: int) -> np.ndarray:
    fill = -100 if key == "labels" else 0
    return np.full((n,) + v.shape[1:], fill, v.dtype)
