"""Evaluation over a whole split: exact loss from summed batches, plus the task's own metrics."""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import numpy as np

from scaling_jax.config import Config
from scaling_jax.data.arrays import ArrayDataset
from scaling_jax.data.ner import ner_eval
from scaling_jax.train.batches import place_batch


def predict_split(eval_step: Callable, params: Any, ds: ArrayDataset, batch_size: int, sharding,
                  max_batches: int = 0, buckets: int = 1) -> tuple[dict, np.ndarray]:
    """Runs `eval_step` over `ds` (length-bucketed, see `ArrayDataset.eval_batches`); returns the
    summed loss stats and per-example predictions in the dataset's order (per-token ones padded
    with 0 to the stored length)."""
    sums = {"loss_sum": 0.0, "count": 0.0, "correct": 0.0}
    outs = []
    for idx, batch in ds.eval_batches(batch_size, max_batches, buckets):
        outs.append((idx, eval_step(params, place_batch(batch, sharding))))  # dispatch all, then read
    width = ds.seq_len if hasattr(ds, "seq_len") else ds.arrays["input_ids"].shape[1]
    preds: np.ndarray | None = None
    for idx, out in outs:
        out = jax.device_get(out)
        for k in sums:
            sums[k] += float(out[k])
        p = np.asarray(out["predictions"])[: len(idx)]
        if preds is None:
            preds = np.zeros((len(ds), width) if p.ndim == 2 else (len(ds),) + p.shape[1:], p.dtype)
        if p.ndim == 2:
            preds[idx, : p.shape[1]] = p
        else:
            preds[idx] = p
    seen = sum(len(idx) for idx, _ in outs)
    if preds is None:
        return sums, np.zeros((0,), np.int32)
    return sums, preds if seen == len(ds) else preds[np.sort(np.concatenate([i for i, _ in outs]))]


def evaluate(eval_step: Callable, params: Any, ds: ArrayDataset, cfg: Config, data, sharding) -> dict:
    # Entity scores need every window of every sentence, so NER always reads the whole split.
    max_batches = 0 if cfg.model.task == "token_classification" else cfg.data.max_eval_batches
    sums, preds = predict_split(eval_step, params, ds, cfg.data.eval_batch_size, sharding, max_batches,
                                cfg.data.eval_buckets)
    count = max(sums["count"], 1.0)
    loss = sums["loss_sum"] / count
    out: dict[str, Any] = {"loss": loss}
    task = cfg.model.task
    if task == "causal_lm":
        out["perplexity"] = math.exp(min(loss, 50.0))
        out["tokens"] = int(sums["count"])
    elif task == "sequence_classification":
        out["accuracy"] = sums["correct"] / count
    elif task == "token_classification":
        out.update(ner_eval(ds, preds, data))
    return out
