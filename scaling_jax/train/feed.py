"""`BatchFeed`: training batches for steps start, start+1, ..., read and placed ahead by a thread.

The batch of step s is a pure function of (seed, s) (`data.sampler.batch_indices`), so the feed
keeps no state worth saving: a resumed run starts a new feed at its step, on any mesh or process
count. Each process reads only the rows its devices hold (`batches.process_rows`).
"""
from __future__ import annotations

import queue
import threading
from typing import Any

import numpy as np

from scaling_jax.data.sampler import batch_indices
from scaling_jax.train.batches import place_rows, process_rows

DEPTH = 4  # batches read ahead: enough to hide a slow read behind a few steps, little memory


class BatchFeed:
    """`get(step)` returns step's global batch (a dict of jax.Arrays); a daemon thread reads the
    next `depth` ones from `ds` (anything with `take(idx)` and `len`) while the steps run. Use as a
    context manager, or call `close()`."""

    def __init__(self, ds, batch_size: int, seed: int, sharding, start: int, stop: int, depth: int = DEPTH):
        self.ds, self.batch_size, self.seed, self.sharding = ds, batch_size, seed, sharding
        self.rows = process_rows(sharding, batch_size)
        self.start, self.stop = start, stop
        self._queue: queue.Queue = queue.Queue(maxsize=max(1, depth))
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._run, name="batch-feed", daemon=True)
        self._thread.start()

    def read(self, step: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """(example ids, host arrays) of this process's rows of step's global batch."""
        idx = batch_indices(step, self.batch_size, len(self.ds), self.seed)[self.rows]
        return idx, self.ds.take(idx)

    def _put(self, item: Any) -> bool:
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        for step in range(self.start, self.stop):
            if self._closed.is_set():
                return
            try:
                _, host = self.read(step)
                item = (step, place_rows(host, self.rows, self.batch_size, self.sharding), None)
            except BaseException as e:  # handed to the caller of get(step), raised there
                item = (step, None, e)
            if not self._put(item) or item[2] is not None:
                return

    def get(self, step: int) -> dict:
        if not self.start <= step < self.stop:
            raise IndexError(f"step {step} outside the feed's steps [{self.start}, {self.stop})")
        got, batch, error = self._queue.get()
        if error is not None:
            raise error
        if got != step:  # the loop asks for steps in order; anything else is a bug here
            raise RuntimeError(f"batch feed out of order: asked for step {step}, next is {got}")
        return batch

    def close(self) -> None:
        self._closed.set()
        self._thread.join(timeout=10)

    def __enter__(self) -> "BatchFeed":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
