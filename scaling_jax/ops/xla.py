"""The `xla` kernels: plain JAX that accelerators compile well.

Backwards come from autodiff, dropout from `jax.random`, attention from
`jax.nn.dot_product_attention` (`implementation="cudnn"` on an NVIDIA GPU where the dtype and head
size qualify; otherwise XLA's). Low-precision products stay in their dtype (the hardware accumulates
in float32), so the backward GEMMs of bf16 compute are bf16 x bf16 as well.
"""
from __future__ import annotations

import math
from typing import Any, Callable

import jax
import jax.numpy as jnp

from scaling_jax.ops.activations import activation

# The fill of masked logits: jax.nn.dot_product_attention's, finite, so a query whose keys are all
# masked averages the values uniformly instead of producing NaN.
MASK_FILL = -0.7 * float(jnp.finfo(jnp.float32).max)


def linear(x_MxK: jax.Array, w_KxN: jax.Array, b_N: jax.Array | None = None, *, act: str | None = None,
           dtype: Any = jnp.float32) -> jax.Array:
    """act(x @ w + b) computed in `dtype` (float32 params cast to it): M x N in `dtype`."""
    y_MxN = jnp.dot(x_MxK.astype(dtype), w_KxN.astype(dtype))
    if b_N is not None:
        y_MxN = y_MxN + b_N.astype(dtype)
    return activation(act)(y_MxN) if act else y_MxN


def dropout_mask(rng: jax.Array, keep: float, shape: tuple[int, ...]) -> jax.Array:
    """Bernoulli(keep) booleans of `shape` (`jax.random.bernoulli`, drawn flat: an N-d draw compiles
    several times slower on XLA:CPU, where the tests run)."""
    return jax.random.bernoulli(rng, keep, (math.prod(shape),)).reshape(shape)


def cudnn_qualifies(q_BxTxNxH: jax.Array) -> bool:
    """cuDNN's fused attention: an NVIDIA GPU, fp16/bf16, head size a multiple of 8 up to 128 (the
    backward's limit on Ampere; cuDNN's support matrix)."""
    if q_BxTxNxH.dtype not in (jnp.bfloat16, jnp.float16):
        return False
    head = q_BxTxNxH.shape[-1]
    if head % 8 or head > 128 or jax.default_backend() != "gpu":
        return False
    return jax.devices()[0].device_kind.upper().startswith("NVIDIA")


def attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, mask: jax.Array | None, *,
              scale: float, dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
    """softmax(q kᵀ scale, masked) v per head; K key/value heads serve N = G K query heads (grouped-
    query attention). `mask` broadcasts to B x N x T x S (True = attend). Logits and softmax in
    float32. Returns B x T x N x H in q's dtype."""
    if dropout_rng is None or dropout_rate == 0.0:
        if cudnn_qualifies(q_BxTxNxH):
            try:
                return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask, scale=scale,
                                                    implementation="cudnn")
            except (ValueError, NotImplementedError, RuntimeError):  # a shape or mask cuDNN refuses
                pass
        return jax.nn.dot_product_attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask=mask, scale=scale)
    return attention_with_dropout(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, scale=scale, rate=dropout_rate,
                                  rng=dropout_rng, mask_fn=dropout_mask)


def attention_with_dropout(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, *, scale: float, rate: float, rng: jax.Array,
                           mask_fn: Callable) -> jax.Array:
    """The same math spelled out, with dropout on the probabilities (HF's attention_probs_dropout /
    attn_pdrop), which jax.nn.dot_product_attention does not offer. `mask_fn(rng, keep, shape)`
    draws the keep mask."""
    B, T, N, H = q_BxTxNxH.shape
    K = k_BxSxKxH.shape[2]
    if K == N:  # plain multi-head: 4-D batched GEMMs (a unit group axis costs XLA:CPU extra copies)
        logits_BxNxTxS = jnp.einsum("btnh,bsnh->bnts", q_BxTxNxH, k_BxSxKxH).astype(jnp.float32) * scale
        probs_BxNxTxS = dropped_softmax(logits_BxNxTxS, mask, rate, rng, mask_fn)
        out_BxTxNxH = jnp.einsum("bnts,bsnh->btnh", probs_BxNxTxS.astype(v_BxSxKxH.dtype), v_BxSxKxH)
        return out_BxTxNxH.astype(q_BxTxNxH.dtype)
    q_BxTxKxGxH = q_BxTxNxH.reshape(B, T, K, N // K, H)
    logits = jnp.einsum("btkgh,bskh->bkgts", q_BxTxKxGxH, k_BxSxKxH).astype(jnp.float32) * scale
    probs_BxKxGxTxS = dropped_softmax(logits, _group_mask(mask, K), rate, rng, mask_fn)
    out = jnp.einsum("bkgts,bskh->btkgh", probs_BxKxGxTxS.astype(v_BxSxKxH.dtype), v_BxSxKxH)
    return out.reshape(B, T, N, H).astype(q_BxTxNxH.dtype)


def cached_attention(q_BxTxNxH: jax.Array, k_BxKxSxH: jax.Array, v_BxKxSxH: jax.Array, mask: jax.Array | None, *,
                     scale: float) -> jax.Array:
    """`attention` over a KV cache laid out heads first, B x K x S x H (HF's cache layout): each
    head's keys and values are one contiguous S x H block, so both products are GEMMs batched over
    (B, K) with no per-step copy of the cache (with B x S x K x H, XLA:CPU transposed every layer's
    cache twice per decode step: a batch-8 SmolLM2 step 70.9 -> 65.5 ms on a 2-core Xeon). `mask`
    broadcasts to B x N x T x S. Returns B x T x N x H in q's dtype."""
    B, T, N, H = q_BxTxNxH.shape
    K, S = k_BxKxSxH.shape[1], k_BxKxSxH.shape[2]
    G = N // K
    # Each KV head's G query heads x T positions as the M rows of one GEMM: q kᵀ (NT) then p v (NN),
    # batched over (B, K), so XLA:CPU runs both on its GEMM path (a G x T split let it pick TN).
    q_BxKxMxH = q_BxTxNxH.reshape(B, T, K, G, H).transpose(0, 2, 3, 1, 4).reshape(B, K, G * T, H)
    logits_BxKxMxS = jax.lax.dot_general(q_BxKxMxH, k_BxKxSxH, (((3,), (3,)), ((0, 1), (0, 1))),
                                         preferred_element_type=jnp.float32) * scale
    if mask is not None:
        mask_BxKxMxS = jnp.broadcast_to(_group_mask(mask, K), (B, K, G, T, S)).reshape(B, K, G * T, S)
        logits_BxKxMxS = jnp.where(mask_BxKxMxS, logits_BxKxMxS, MASK_FILL)
    probs_BxKxMxS = jax.nn.softmax(logits_BxKxMxS, axis=-1).astype(v_BxKxSxH.dtype)
    out_BxKxMxH = jax.lax.dot_general(probs_BxKxMxS, v_BxKxSxH, (((3,), (2,)), ((0, 1), (0, 1))))
    return out_BxKxMxH.reshape(B, K, G, T, H).transpose(0, 3, 1, 2, 4).reshape(B, T, N, H).astype(q_BxTxNxH.dtype)


def _group_mask(mask: jax.Array | None, kv_heads: int) -> jax.Array | None:
    """A B x (1 | N) x T x S mask laid out for B x K x G x T x S logits."""
    if mask is None:
        return None
    mask = jnp.asarray(mask)
    if mask.ndim != 4:
        raise ValueError(f"attention mask must be 4-D (B x heads x T x S), got shape {mask.shape}")
    if mask.shape[1] == 1:
        return mask[:, :, None]
    return mask.reshape(mask.shape[0], kv_heads, mask.shape[1] // kv_heads, *mask.shape[2:])


def dropped_softmax(logits: jax.Array, mask: jax.Array | None, rate: float, rng: jax.Array,
                    mask_fn: Callable) -> jax.Array:
    """Masked float32 softmax over the last axis, then inverted dropout at `rate`."""
    if mask is not None:
        logits = jnp.where(mask, logits, MASK_FILL)
    probs = jax.nn.softmax(logits, axis=-1)
    keep = mask_fn(rng, 1.0 - rate, probs.shape)
    return jnp.where(keep, probs / (1.0 - rate), 0.0)


__all__ = ["linear", "attention", "attention_with_dropout", "cached_attention", "dropout_mask", "cudnn_qualifies",
           "dropped_softmax", "MASK_FILL"]
