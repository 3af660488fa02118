"""Attention masks (boolean, True = may attend) from padding, causality, segment ids and windows.

Every mask broadcasts against attention logits B x heads x T (queries) x S (keys); backends take
it as it is, so packed rows (segment ids), causal LMs and sliding windows reach every backend alike.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def padding_mask(attention_mask_BxS: jax.Array | None) -> jax.Array | None:
    """1 = real token -> key mask Bx1x1xS; None stays None."""
    if attention_mask_BxS is None:
        return None
    return (jnp.asarray(attention_mask_BxS) != 0)[:, None, None, :]


def causal_mask(length: int) -> jax.Array:
    """Query i sees keys j <= i: 1x1xLxL."""
    return jnp.tril(jnp.ones((length, length), bool))[None, None]


def segment_mask(segment_ids_BxT: jax.Array, segment_ids_BxS: jax.Array | None = None) -> jax.Array:
    """Query and key in the same segment (packed rows; segment 0 = padding sees nothing): Bx1xTxS."""
    kv = segment_ids_BxT if segment_ids_BxS is None else segment_ids_BxS
    same = segment_ids_BxT[:, :, None] == kv[:, None, :]
    return (same & (kv[:, None, :] != 0))[:, None]


def window_mask(query_pos_BxT: jax.Array, key_pos_BxS: jax.Array, window: int) -> jax.Array:
    """Sliding window (Mistral): query at position i sees keys at i - window + 1 .. i: Bx1xTxS."""
    d = query_pos_BxT[:, :, None] - key_pos_BxS[:, None, :]
    return ((d >= 0) & (d < window))[:, None]


def decoder_mask(query_pos_BxT: jax.Array, key_pos_BxS: jax.Array, key_valid_BxS: jax.Array | None = None,
                 sliding_window: int | None = None) -> jax.Array:
    """A decoder's attention mask, Bx1xTxS: a key is seen when it is valid (a real token, already
    written to a KV cache), not after the query (key position <= query position) and, with a
    window w, at most w - 1 positions before it (Mistral; HF's `sliding_window_overlay`).
    Positions, not indices, so left-padded rows and cache slots compare by where their tokens
    stand in the text; with positions 0..L-1 it is `causal_mask(L)` (and the padding mask)."""
    causal = (query_pos_BxT[:, :, None] >= key_pos_BxS[:, None, :])[:, None]
    window = window_mask(query_pos_BxT, key_pos_BxS, sliding_window) if sliding_window else None
    return combine(causal, window, padding_mask(key_valid_BxS))


def combine(*masks: jax.Array | None) -> jax.Array | None:
    """The conjunction of the given masks (None = no constraint); None when all are None."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out


__all__ = ["padding_mask", "causal_mask", "segment_mask", "window_mask", "decoder_mask", "combine"]
