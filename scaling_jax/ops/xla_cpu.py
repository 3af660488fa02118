"""The `xla_cpu` kernels: the `xla` ones with the tricks that pay on XLA:CPU, measured at whole-step
level by `scaling-jax bench --kernels` (each docstring says what it buys). Chosen only on the CPU.

- `dropout_mask`: threefry written in jnp, 16-bit draws (jax lowers its threefry primitive on CPU as
  a rolled while loop, one pass over memory per 4 rounds). Whole step, bench shape, 2-core AMD EPYC
  (2026-12-01): float32 1.12x, bf16 1.06x over jax.random.bernoulli.
- bf16 `linear` and bf16 attention with dropout, only on a CPU with bf16 dot instructions
  (hostmem.cpu_info: AVX512-BF16, AMX, Arm BF16): every GEMM forward and backward a batch-leading,
  row-major bf16 x bf16 -> f32 product, which XLA:CPU runs on that fast path; autodiff's
  transposed, mixed-dtype dots run at the float32 rate there (whole bf16 step 643 -> 498 ms with
  `matmul_acc32`, then 1.1x more with the attention's, on a Sapphire Rapids, notes entries 6,
  22-23). Where bf16 dots are emulated they cost: the step was 9% (linear) and 1% (attention)
  slower with them on the AMD EPYC above, so there the plain `xla` kernels run.
"""
from __future__ import annotations

import functools
import math
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp

from scaling_jax.hostmem import cpu_info
from scaling_jax.ops import xla
from scaling_jax.ops.activations import activation


# ---------------------------------------------------------------- dropout bits

_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds) on uint32 words, bit for bit `jax.extend.random.threefry_2x32`.

    Spelled out in jnp so XLA fuses all rounds into one loop (4x faster than jax's threefry
    primitive on XLA:CPU for a dropout mask).
    """
    ks = (k1, k2, k1 ^ k2 ^ jnp.uint32(0x1BD11BDA))
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _THREEFRY_ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = x1 ^ ((x2 << jnp.uint32(r)) | (x2 >> jnp.uint32(32 - r)))
        x1, x2 = x1 + ks[(i + 1) % 3], x2 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
    return x1, x2


def dropout_mask(rng: jax.Array, keep: float, shape: tuple[int, ...]) -> jax.Array:
    """Bernoulli(keep) booleans of `shape` from threefry(rng, counter) bits, 16 bits per draw.

    Each threefry call's two output words give the draws of the mask's first and second halves, each
    word two 16-bit draws; an element is dropped when its draw is below round((1 - keep) 2^16), so
    the drop rate is exact to 2^-17 (rates 16 bits cannot hold within 0.1%, below ~0.008, use 32-bit
    draws). A key that is not threefry's 2 words (rbg) falls back to jax.random.bernoulli.
    Buys: a 16x4x128x128 mask in 1.4 ms vs jax.random.bernoulli's 7.3 ms on a 2-core CPU.
    """
    n = math.prod(shape)
    data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    if data.shape != (2,):
        return xla.dropout_mask(rng, keep, shape)
    rate = 1.0 - keep
    bits = 16 if abs(round(rate * 2**16) - rate * 2**16) <= 1e-3 * rate * 2**16 else 32
    per_word = 32 // bits
    counter = jnp.arange(-(-n // (2 * per_word)), dtype=jnp.uint32)
    word = jnp.concatenate(threefry2x32(data[0], data[1], counter, jnp.zeros_like(counter)))
    if bits == 16:
        word = (word[:, None] >> jnp.array([0, 16], jnp.uint32)) & jnp.uint32(0xFFFF)
    threshold = jnp.uint32(min(round(rate * 2.0**bits), 2**32 - 1))
    return (word.reshape(-1)[:n] >= threshold).reshape(shape)


# ---------------------------------------------------------------- bf16 GEMMs

def materialized_transpose(x: jax.Array, axes: tuple[int, ...], probe: jax.Array) -> jax.Array:
    """`jnp.transpose(x, axes)` as its own row-major array that XLA cannot fold into a dot.

    XLA folds a transpose feeding a dot into the dot's dimension numbers, and XLA:CPU runs a dot
    whose operands are not batch-leading, row-major NN/NT on its slow path (bf16 upcast to f32). The
    transpose therefore sits in a conditional on `probe == probe`, a run-time scalar the compiler
    cannot prove true, so the folding does not cross it; a NaN probe gives an all-NaN result (pass an
    element of the same data, whose NaN poisons it anyway). The probe goes through an optimization
    barrier: a constant probe would let XLA fold the conditional after its dot-type decisions.
    """
    probe = jax.lax.optimization_barrier(probe)
    return jax.lax.cond(probe == probe, lambda x: jnp.transpose(x, axes),
                        lambda x: jnp.full(jnp.transpose(x, axes).shape, jnp.nan, x.dtype), x)


def _first(x: jax.Array) -> jax.Array:
    return x[(0,) * x.ndim]


def _swap_last(x: jax.Array) -> jax.Array:
    return materialized_transpose(x, (*range(x.ndim - 2), x.ndim - 1, x.ndim - 2), _first(x))


@jax.custom_vjp
def matmul_acc32(x_MxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
    """x @ w for bf16 inputs, accumulated and returned in float32, with the backward spelled out:
    dx as bf16 x bf16 -> f32, dw = xᵀ g with xᵀ materialised (a dot contracting both operands' rows
    runs on XLA:CPU's float32 path whatever the spelling: 7.5 vs 3.0 ms for the 2048x256 -> 1024
    layer of the bench shape)."""
    return jnp.dot(x_MxK, w_KxN, preferred_element_type=jnp.float32)


def _matmul_acc32_fwd(x_MxK, w_KxN):
    return matmul_acc32(x_MxK, w_KxN), (x_MxK, w_KxN)


def _matmul_acc32_bwd(res, g_MxN):
    x_MxK, w_KxN = res
    g = g_MxN.astype(w_KxN.dtype)
    dx = jax.lax.dot_general(g, w_KxN, (((1,), (1,)), ((), ())), preferred_element_type=jnp.float32)
    xT_KxM = materialized_transpose(x_MxK, (1, 0), g_MxN[0, 0])
    dw = jnp.dot(xT_KxM, g, preferred_element_type=jnp.float32)
    return dx.astype(x_MxK.dtype), dw.astype(w_KxN.dtype)


matmul_acc32.defvjp(_matmul_acc32_fwd, _matmul_acc32_bwd)


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def batched_matmul(a: jax.Array, b: jax.Array, b_transposed: bool = False) -> jax.Array:
    """a @ b (a @ bᵀ with `b_transposed`) over leading batch axes, in float32; every backward GEMM a
    batch-leading NN or NT product of one dtype (autodiff's would be TN and mixed f32 x bf16)."""
    return jnp.einsum("...ij,...kj->...ik" if b_transposed else "...ij,...jk->...ik", a, b,
                      preferred_element_type=jnp.float32)


def _bmm_fwd(a, b, b_transposed):
    return batched_matmul(a, b, b_transposed), (a, b)


def _bmm_bwd(b_transposed, res, g):
    a, b = res
    g = g.astype(a.dtype)
    if b_transposed:  # c = a bᵀ: da = g b, db = gᵀ a
        da = jnp.einsum("...ik,...kj->...ij", g, b, preferred_element_type=jnp.float32)
        db = jnp.einsum("...ki,...ij->...kj", _swap_last(g), a, preferred_element_type=jnp.float32)
    else:  # c = a b: da = g bᵀ, db = aᵀ g
        da = jnp.einsum("...ik,...jk->...ij", g, b, preferred_element_type=jnp.float32)
        db = jnp.einsum("...ji,...ik->...jk", _swap_last(a), g, preferred_element_type=jnp.float32)
    return da.astype(a.dtype), db.astype(b.dtype)


batched_matmul.defvjp(_bmm_fwd, _bmm_bwd)


@functools.lru_cache(maxsize=1)
def native_bf16_dots() -> bool:
    """Whether this CPU has bf16 dot instructions (the bf16 GEMM tricks pay only then)."""
    return cpu_info()["bf16_dots"] == "native"


def linear(x_MxK: jax.Array, w_KxN: jax.Array, b_N: jax.Array | None = None, *, act: str | None = None,
           dtype: Any = jnp.float32) -> jax.Array:
    """`xla.linear`, or `linear_acc32` for bf16 on a CPU with bf16 dot instructions."""
    if jnp.dtype(dtype) == jnp.float32 or not native_bf16_dots():
        return xla.linear(x_MxK, w_KxN, b_N, act=act, dtype=dtype)
    return linear_acc32(x_MxK, w_KxN, b_N, act=act, dtype=dtype)


def linear_acc32(x_MxK: jax.Array, w_KxN: jax.Array, b_N: jax.Array | None = None, *, act: str | None = None,
                 dtype: Any = jnp.bfloat16) -> jax.Array:
    """`matmul_acc32` with bias and activation on the float32 accumulator (XLA:CPU emulates bf16
    elementwise math with a round after every op: the erf GELU's backward took 9-12 ms per layer
    that way), then one cast to `dtype`."""
    y_MxN = matmul_acc32(x_MxK.astype(dtype), w_KxN.astype(dtype))
    if b_N is not None:
        y_MxN = y_MxN + b_N
    if act:
        y_MxN = activation(act)(y_MxN)
    return y_MxN.astype(dtype)


def attention(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, mask: jax.Array | None, *,
              scale: float, dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
    """`xla.attention` with this module's dropout bits; `attention_bmm` for bf16 with dropout on a
    CPU with bf16 dot instructions."""
    if dropout_rng is None or dropout_rate == 0.0:
        return xla.attention(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, scale=scale)
    if q_BxTxNxH.dtype == jnp.float32 or q_BxTxNxH.shape[2] != k_BxSxKxH.shape[2] or not native_bf16_dots():
        return xla.attention_with_dropout(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, scale=scale, rate=dropout_rate,
                                          rng=dropout_rng, mask_fn=dropout_mask)
    return attention_bmm(q_BxTxNxH, k_BxSxKxH, v_BxSxKxH, mask, scale=scale, dropout_rate=dropout_rate,
                         dropout_rng=dropout_rng)


def attention_bmm(q_BxTxNxH: jax.Array, k_BxSxKxH: jax.Array, v_BxSxKxH: jax.Array, mask: jax.Array | None, *,
                  scale: float, dropout_rate: float, dropout_rng: jax.Array) -> jax.Array:
    """bf16 attention with dropout (as many key/value heads as query heads), the heads moved first
    as arrays of their own so the batched GEMMs forward and backward are bf16 NN/NT products
    (`batched_matmul`)."""
    heads = lambda t: materialized_transpose(t, (0, 2, 1, 3), _first(t))
    logits_BxNxTxS = batched_matmul(heads(q_BxTxNxH), heads(k_BxSxKxH), True) * scale
    probs = xla.dropped_softmax(logits_BxNxTxS, mask, dropout_rate, dropout_rng, dropout_mask)
    out_BxNxTxH = batched_matmul(probs.astype(v_BxSxKxH.dtype), heads(v_BxSxKxH)).astype(v_BxSxKxH.dtype)
    return materialized_transpose(out_BxNxTxH, (0, 2, 1, 3), _first(out_BxNxTxH))


__all__ = ["linear", "linear_acc32", "attention", "attention_bmm", "dropout_mask", "native_bf16_dots", "threefry2x32",
           "matmul_acc32", "batched_matmul", "materialized_transpose"]
