"""Task losses as (sum, count) pairs so micro-batches and data shards add up exactly."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from scaling_jax.metrics import IGNORE_INDEX



def _masked_xent(logits_NxC: jax.Array, labels_N: jax.Array, mask_N: jax.Array):
    logits_NxC = logits_NxC.astype(jnp.float32)
    safe = jnp.where(mask_N, labels_N, 0)
    nll_N = optax.softmax_cross_entropy_with_integer_labels(logits_NxC, safe)
    mask_N = mask_N.astype(jnp.float32)
    correct = (jnp.argmax(logits_NxC, -1) == safe).astype(jnp.float32) * mask_N
    return jnp.sum(nll_N * mask_N), jnp.sum(mask_N), jnp.sum(correct)


def causal_lm_loss(logits_BxLxV: jax.Array, batch: dict):
    """Next-token loss: position t predicts token t+1; a target is counted when both are real tokens
    and, in packed rows (`segment_ids`), of the same document."""
    ids_BxL = batch["input_ids"]
    mask_BxL = batch.get("attention_mask")
    if mask_BxL is None:
        mask_BxL = jnp.ones_like(ids_BxL)
    counted_BxL1 = (mask_BxL[:, 1:] * mask_BxL[:, :-1]) > 0
    if "segment_ids" in batch:
        seg_BxL = batch["segment_ids"]
        counted_BxL1 = counted_BxL1 & (seg_BxL[:, 1:] == seg_BxL[:, :-1])
    logits = logits_BxLxV[:, :-1]
    B, L1, V = logits.shape
    return _masked_xent(logits.reshape(B * L1, V), ids_BxL[:, 1:].reshape(-1), counted_BxL1.reshape(-1))


def token_classification_loss(logits_BxLxC: jax.Array, batch: dict):
    """Per-token loss; labels of -100 (padding, special tokens, non-first word pieces) are ignored."""
    labels_BxL = batch["labels"]
    B, L, C = logits_BxLxC.shape
    return _masked_xent(logits_BxLxC.reshape(B * L, C), labels_BxL.reshape(-1),
                        labels_BxL.reshape(-1) != IGNORE_INDEX)


def sequence_classification_loss(logits_BxC: jax.Array, batch: dict):
    """One label per sequence: logits BxC with labels B, or packed rows' BxSxC with labels BxS
    (-100 for an empty segment slot)."""
    labels = batch["labels"].reshape(-1)
    return _masked_xent(logits_BxC.reshape(labels.shape[0], -1), labels, labels != IGNORE_INDEX)


LOSSES = {
    "causal_lm": causal_lm_loss,
    "token_classification": token_classification_loss,
    "masked_lm": token_classification_loss,
    "sequence_classification": sequence_classification_loss,
}


def loss_for_task(task: str):
    if task not in LOSSES:
        raise ValueError(f"no loss for task {task!r}; known: {', '.join(LOSSES)}")
    return LOSSES[task]
