"""`ArrayDataset`: tokenized examples as equal-length numpy arrays, batched by index."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Iterator

import numpy as np

from scaling_jax.data.sampler import batch_indices
from scaling_jax.metrics import IGNORE_INDEX


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

    def eval_batches(self, batch_size: int, max_batches: int = 0, buckets: int = 1
                     ) -> Iterator[tuple[np.ndarray, dict]]:
        """Batches padded to `batch_size` with empty rows (attention 0, labels -100), every real
        example seen once. Yields (indices, batch).

        With `buckets` > 1 (and the whole split read, `max_batches` 0), examples go shortest first
        and each batch's per-token columns are cut to the smallest of `bucket_lengths` that holds
        its longest example, so eval does not pay for the longest sentence on every batch; the
        step compiles once per bucket length. Otherwise batches keep the stored order and length.
        """
        n = len(self)
        order = np.arange(n)
        width = self.arrays["input_ids"].shape[1] if self.arrays["input_ids"].ndim == 2 else 0
        lengths = None
        if buckets > 1 and not max_batches and width and "attention_mask" in self.arrays:
            lengths = self.arrays["attention_mask"].sum(axis=1)
            order = np.argsort(lengths, kind="stable")
            bounds = bucket_lengths(width, buckets)
        count = 0
        for start in range(0, n, batch_size):
            if max_batches and count >= max_batches:
                return
            idx = order[start:start + batch_size]
            batch = self.take(idx)
            if lengths is not None:
                cut = next(b for b in bounds if b >= max(int(lengths[idx].max()), 1))
                batch = {k: v[:, :cut] if v.ndim >= 2 and v.shape[1] == width else v for k, v in batch.items()}
            pad = batch_size - len(idx)
            if pad:
                batch = {k: np.concatenate([v, _empty_rows(k, v, pad)]) for k, v in batch.items()}
            count += 1
            yield idx, batch


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


def bucket_lengths(width: int, buckets: int, multiple_of: int = 8) -> list[int]:
    """`buckets` evenly spaced lengths up to `width`, multiples of `multiple_of` (the last is `width`)."""
    out = sorted({min(width, -(-(width * (i + 1) // buckets) // multiple_of) * multiple_of) for i in range(buckets)})
    return [b for b in out if b > 0] or [width]


def _empty_rows(key: str, v: np.ndarray, n: int) -> np.ndarray:
    fill = IGNORE_INDEX if key == "labels" else 0
    return np.full((n,) + v.shape[1:], fill, v.dtype)
