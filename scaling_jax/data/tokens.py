"""`TokenWindows`: a causal-LM dataset of fixed windows read by index from a prepared token store."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import numpy as np

from scaling_jax.data.arrays import eval_batches
from scaling_jax.data.packing import segments_from_eos
from scaling_jax.data.sampler import batch_indices
from scaling_jax.data.shards import TokenStore
from scaling_jax.errors import DataError


@dataclass
class TokenWindows:
    """Non-overlapping windows of `seq_len` tokens over tokens [start, stop) of `store` (the
    remainder is dropped): window i holds tokens start + i*seq_len ... + seq_len. Windows cross
    document boundaries (documents are joined with EOS, as GPT-2 was trained), but never leave
    [start, stop), so a split cut at a document end shares no window with the rest.

    `take(idx)` copies only the rows asked for out of the memory map: a process reads what its
    devices hold, and the corpus never enters memory.

    With `eos_id` (data.pack: true), each window also carries `segment_ids` and `positions` that
    cut it at every EOS, so no token attends across a document boundary (document masking)."""
    store: TokenStore
    seq_len: int
    start: int = 0
    stop: int = -1
    meta: None = None  # no per-example host data (ArrayDataset's `meta` is for NER decoding)
    eos_id: int | None = None  # set: document masking inside windows

    def __post_init__(self):
        if self.stop < 0:
            self.stop = self.store.n_tokens
        if len(self) == 0:
            raise DataError(f"{self.store.path}: {self.stop - self.start} tokens, fewer than one window of "
                            f"{self.seq_len}")

    def __len__(self) -> int:
        return (self.stop - self.start) // self.seq_len

    @property
    def n_tokens(self) -> int:
        return len(self) * self.seq_len

    def take(self, idx: np.ndarray) -> dict[str, np.ndarray]:
        L = self.seq_len
        idx = np.asarray(idx, np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window {int(idx.max())} outside {len(self)} windows")
        x = np.empty((idx.size, L), np.int32)
        for r, i in enumerate(idx):
            s = self.start + int(i) * L
            x[r] = self.store.read(s, s + L)
        out = {"input_ids": x, "attention_mask": np.ones_like(x)}
        if self.eos_id is not None:
            out["segment_ids"], out["positions"] = segments_from_eos(x, self.eos_id)
        return out

    def train_batch(self, step: int, batch_size: int, seed: int) -> dict[str, np.ndarray]:
        return self.take(batch_indices(step, batch_size, len(self), seed))

    def eval_batches(self, batch_size: int, max_batches: int = 0, buckets: int = 1
                     ) -> Iterator[tuple[np.ndarray, dict]]:
        del buckets  # every window is full: nothing to bucket
        return eval_batches(self, batch_size, max_batches)


def document_cut(store: TokenStore, held_out: int) -> int:
    """The stream offset where the last `held_out` documents begin (train ends, validation starts)."""
    if not 0 < held_out < store.n_documents:
        raise DataError(f"{store.path}: cannot hold out {held_out} of its {store.n_documents} documents "
                        f"(data.valid_documents)")
    return int(store.doc_ends[store.n_documents - held_out - 1])
