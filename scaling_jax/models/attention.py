"""Pieces both networks share: attention, masks, dropout, HF activations, logically named layers, config dicts."""
from __future__ import annotations

import dataclasses
import math
from functools import partial
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling_jax.config import REMAT_POLICIES

Dtype = Any

# HF `hidden_act` / `activation_function` names (transformers/activations.py ACT2FN) -> jax.
# "gelu" is the exact erf form; the tanh family (gelu_new, gelu_pytorch_tanh, ...) all compute
# 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))).
_GELU_TANH = lambda x: jax.nn.gelu(x, approximate=True)
# torch's formula, x/2 (1 + erf(x/sqrt 2)): jax.nn.gelu's exact form goes through erfc, whose
# forward is 1.8x slower on XLA:CPU (2.0 vs 1.1 ms for 2048x1024; values within 5e-7).
_gelu_erf_formula = lambda x: 0.5 * x * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))


@jax.custom_vjp
def _gelu_erf(x: jax.Array) -> jax.Array:
    """torch's exact GELU, x/2 (1 + erf(x/sqrt 2)), keeping only x for the backward.

    Autodiff of the formula keeps erf's and the product's intermediates and runs the derivative as a
    chain of separate fusions; the derivative written out, Phi(x) + x phi(x), is one pass over x:
    3 ms less per FFN forward+backward on the bench shape (notes/PERFORMANCE.md, entry 18).
    """
    return _gelu_erf_formula(x)


def _gelu_erf_fwd(x):
    return _gelu_erf_formula(x), x


def _gelu_erf_bwd(x, g):
    cdf = 0.5 * (1.0 + jax.lax.erf(x * (1.0 / math.sqrt(2.0))))
    pdf = jnp.exp(-0.5 * x * x) * (1.0 / math.sqrt(2.0 * math.pi))
    return (g * (cdf + x * pdf),)


_gelu_erf.defvjp(_gelu_erf_fwd, _gelu_erf_bwd)
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu": _gelu_erf,
    "gelu_python": _gelu_erf,
    "gelu_new": _GELU_TANH,
    "gelu_pytorch_tanh": _GELU_TANH,
    "gelu_python_tanh": _GELU_TANH,
    "gelu_fast": _GELU_TANH,
    "gelu_accurate": _GELU_TANH,
    "quick_gelu": lambda x: x * jax.nn.sigmoid(1.702 * x),
    "relu": jax.nn.relu,
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "tanh": jnp.tanh,
    "sigmoid": jax.nn.sigmoid,
    "linear": lambda x: x,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
    """The activation HF calls `name`; an unknown name is an error listing the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"activation {name!r} is not supported; known: {', '.join(sorted(ACTIVATIONS))}") from None


@jax.custom_vjp
def matmul_acc32(x_MxK: jax.Array, w_KxN: jax.Array) -> jax.Array:
    """x @ w for low-precision (bfloat16) inputs, accumulated and returned in float32.

    XLA:CPU runs bf16 x bf16 -> f32 GEMMs on the AMX/AVX512-BF16 path (~860 GFLOP/s here) but
    bf16 -> bf16 ones at the float32 rate (~140), and autodiff's transposed dots come out mixed
    (f32 cotangent x bf16 operand), which XLA upcasts. So the backward is spelled out: dx as
    bf16 x bf16 -> f32, and dw as `weight_grad` (below).
    """
    return jnp.dot(x_MxK, w_KxN, preferred_element_type=jnp.float32)


def _matmul_acc32_fwd(x_MxK, w_KxN):
    return matmul_acc32(x_MxK, w_KxN), (x_MxK, w_KxN)


def _matmul_acc32_bwd(res, g_MxN):
    x_MxK, w_KxN = res
    dx = jax.lax.dot_general(g_MxN.astype(w_KxN.dtype), w_KxN, (((1,), (1,)), ((), ())),
                             preferred_element_type=jnp.float32)
    return dx.astype(x_MxK.dtype), weight_grad(x_MxK, g_MxN).astype(w_KxN.dtype)


matmul_acc32.defvjp(_matmul_acc32_fwd, _matmul_acc32_bwd)


def weight_grad(x_MxK: jax.Array, g_MxN: jax.Array) -> jax.Array:
    """xᵀ @ g in float32 for a bf16 `x`: the kernel gradient of `matmul_acc32`.

    A dot contracting both operands' rows (xᵀ g) is one XLA:CPU runs on its float32 path
    whatever the spelling: it folds any transpose, even one behind an elementwise op or an
    optimization barrier, back into the dot, and upcasts such a bf16 dot to f32 (7.5 ms for the
    2048x256 -> 1024 layer vs 1.8 ms for the same GEMM with xᵀ already row-major). On CPU xᵀ is
    therefore materialised (`materialized_transpose`) and the GEMM runs as bf16 x bf16 -> f32
    (3.0 ms with the copy, notes/PERFORMANCE.md entry 22). Elsewhere it is the plain float32 dot.
    """
    def cpu(x, g):
        xT_KxM = _cond_transpose(x, (1, 0), g[0, 0])
        return jnp.dot(xT_KxM, g.astype(x.dtype), preferred_element_type=jnp.float32)

    def other(x, g):
        return jax.lax.dot_general(x.astype(jnp.float32), g.astype(jnp.float32), (((0,), (0,)), ((), ())))

    return jax.lax.platform_dependent(x_MxK, g_MxN, cpu=cpu, default=other)


def materialized_transpose(x: jax.Array, axes: tuple[int, ...], probe: jax.Array) -> jax.Array:
    """`jnp.transpose(x, axes)`; on CPU as its own row-major array that XLA cannot fold into a dot.

    XLA folds a transpose feeding a dot into the dot's dimension numbers; XLA:CPU then runs every
    dot whose operands are not batch-leading, row-major NN/NT on its slow paths (bf16 upcast to
    f32, Eigen instead of YNNPACK: 40-55 vs 170-180 GFLOP/s for the attention's batched GEMMs here).
    On CPU the transpose therefore sits in a conditional on `probe == probe`, a run-time scalar the
    compiler cannot prove true, so the folding does not cross it. It is true unless `probe` is NaN;
    then the result is all NaN: pass an element of the same data, whose NaN poisons it anyway. The
    probe goes through an optimization barrier: a constant probe (a constant cotangent) would let
    XLA fold the conditional after its dot-type decisions, leaving a transposed bf16 dot that
    XLA:CPU's dot thunk refuses at run time (tested).
    """
    return jax.lax.platform_dependent(x, probe, cpu=lambda x, p: _cond_transpose(x, axes, p),
                                      default=lambda x, p: jnp.transpose(x, axes))


def _cond_transpose(x, axes, probe):
    probe = jax.lax.optimization_barrier(probe)
    return jax.lax.cond(probe == probe, lambda x: jnp.transpose(x, axes),
                        lambda x: jnp.full(jnp.transpose(x, axes).shape, jnp.nan, x.dtype), x)


def _first(x: jax.Array) -> jax.Array:
    return x[(0,) * x.ndim]


def _swap_last(x: jax.Array) -> jax.Array:
    return materialized_transpose(x, (*range(x.ndim - 2), x.ndim - 1, x.ndim - 2), _first(x))


@partial(jax.custom_vjp, nondiff_argnums=(2,))
def batched_matmul(a: jax.Array, b: jax.Array, b_transposed: bool = False) -> jax.Array:
    """a @ b (a @ bᵀ with `b_transposed`) over leading batch axes, accumulated and returned in
    float32: the attention's probabilities x values (logits).

    The backward is spelled out so every GEMM is a batch-leading NN or NT product of operands in
    one dtype (autodiff's would be TN, and mixed f32 x bf16): the operand a TN product would
    transpose is materialised (`materialized_transpose`) instead.
    """
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


class Dense(nn.Module):
    """nn.Dense's params and math (kernel (in, out), bias (out,), computed in `dtype`), applied to the
    input flattened to 2-D.

    A [B, L, D] @ [D, F] dot_general makes the kernel gradient contract over two axes, which XLA:CPU
    lowers with a transpose copy of the activations; [B*L, D] @ [D, F] is one plain GEMM each way
    (measured 2x faster for the 256 -> 1024 layer of the bench shape, notes/PERFORMANCE.md).
    """

    features: int
    axes: tuple[str | None, str | None]
    std: float
    dtype: Dtype = jnp.float32
    use_bias: bool = True
    act: str | None = None  # an ACTIVATIONS name, applied in float32 before the cast to `dtype`

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(self.std), self.axes),
                            (x.shape[-1], self.features), jnp.float32)
        x_MxK = x.reshape(-1, x.shape[-1]).astype(self.dtype)
        if jnp.dtype(self.dtype) == jnp.float32:
            y = jnp.dot(x_MxK, kernel)
        else:
            y = matmul_acc32(x_MxK, kernel.astype(self.dtype))
        if self.use_bias:
            bias = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axes[1],)),
                              (self.features,), jnp.float32)
            y = y + bias
        if self.act is not None:
            y = activation(self.act)(y)
        return y.astype(self.dtype).reshape(*x.shape[:-1], self.features)


def dense(features: int, axes: tuple[str | None, str | None], *, std: float, dtype: Dtype, name: str,
          use_bias: bool = True, act: str | None = None) -> Dense:
    """A Dense whose (in, out) kernel and (out,) bias carry logical axis names; HF init N(0, std), bias 0.

    `act` (an ACTIVATIONS name) is applied to the float32 accumulator: with bfloat16 compute the
    activation and its gradient stay in float32 (bf16 elementwise math is emulated on CPU with a
    round after every op: the erf GELU's backward took 9-12 ms per layer that way, notes entry 11).
    """
    return Dense(features, axes, std, dtype, use_bias, act, name=name)


def layer_norm(epsilon: float, *, dtype: Dtype, name: str) -> nn.LayerNorm:
    """torch.nn.LayerNorm's math: two-pass variance (Flax's default one-pass E[x²]-E[x]² loses ~1e-4
    at BERT scale), statistics in float32 whatever the compute dtype."""
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


class Embed(nn.Embed):
    """nn.Embed (same param, `attend`) whose lookup gathers float32 rows and then casts them.

    nn.Embed casts the whole table to `dtype` before the gather, so bf16 compute converts all
    30522 x 256 rows every step and scatters the gradient into a bf16 table that is then
    converted back; gathering first touches only the looked-up rows and accumulates the gradient of
    repeated tokens in float32. Identical in float32.
    """

    def __call__(self, inputs: jax.Array) -> jax.Array:
        return jnp.take(self.embedding, inputs, axis=0).astype(self.dtype)


def embed(num: int, features: int, axes: tuple[str | None, str | None], *, std: float, dtype: Dtype,
          name: str) -> Embed:
    return Embed(num, features, dtype=dtype, param_dtype=jnp.float32, name=name,
                 embedding_init=nn.with_logical_partitioning(nn.initializers.normal(std), axes))


def tied_logits(x_BxLxD: jax.Array, table_VxD: jax.Array, dtype: Dtype) -> jax.Array:
    """x @ tableᵀ (an LM head tied to the input embeddings), accumulated and returned in float32."""
    return jnp.einsum("bld,vd->blv", x_BxLxD.astype(dtype), table_VxD.astype(dtype),
                      preferred_element_type=jnp.float32)


_THREEFRY_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))


def threefry2x32(k1: jax.Array, k2: jax.Array, x1: jax.Array, x2: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Threefry-2x32 (20 rounds) on uint32 words, bit for bit `jax.extend.random.threefry_2x32`.

    Spelled out in jnp so XLA fuses all rounds into one loop: jax lowers its threefry primitive on
    CPU as a rolled while loop, one pass over memory per 4 rounds (4x slower here, notes entry 10).
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

    Each threefry call's two output words give the draws of the mask's first and second halves
    (concatenated: an interleave costs more than the hash), each word two 16-bit draws shifted out
    by broadcast; an element is dropped when its draw is below round((1 - keep) * 2^16), so the
    drop rate is exact to 2^-17 (jax.random.bernoulli is exact to 2^-23). Rates 16 bits cannot hold
    within 0.1% (below ~0.008) use 32-bit draws. A key that is not threefry's 2 words (rbg,
    unsafe_rbg) falls back to jax.random.bernoulli. Measured on a 16x4x128x128 mask: 1.4 ms vs
    jax.random.bernoulli's 7.3 ms with one word per call (notes entry 10); both words: entry 24.
    """
    n = math.prod(shape)
    data = jax.random.key_data(rng) if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key) else rng
    if data.shape != (2,):
        return jax.random.bernoulli(rng, keep, shape)
    rate = 1.0 - keep
    bits = 16 if abs(round(rate * 2**16) - rate * 2**16) <= 1e-3 * rate * 2**16 else 32
    per_word = 32 // bits
    counter = jnp.arange(-(-n // (2 * per_word)), dtype=jnp.uint32)
    word = jnp.concatenate(threefry2x32(data[0], data[1], counter, jnp.zeros_like(counter)))
    if bits == 16:
        word = (word[:, None] >> jnp.array([0, 16], jnp.uint32)) & jnp.uint32(0xFFFF)
    threshold = jnp.uint32(min(round(rate * 2.0**bits), 2**32 - 1))
    return (word.reshape(-1)[:n] >= threshold).reshape(shape)


class Dropout(nn.Module):
    """Inverted dropout (as nn.Dropout, `dropout` rng stream) with a flat-drawn mask (`dropout_mask`)."""

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        return jnp.where(dropout_mask(self.make_rng("dropout"), keep, x.shape), x / keep, 0.0).astype(x.dtype)


SCAN_DEFAULT_POLICY = "dots_with_no_batch_dims_saveable"


def remat_policy(remat: bool | str, scan: bool) -> str | None:
    """The checkpoint policy name for `remat` (False | True | a REMAT_POLICIES name), or None.

    True = full recompute (`nothing_saveable`). False unrolled = plain autodiff (no checkpoint);
    False scanned = `dots_with_no_batch_dims_saveable`: a scan otherwise stacks every residual of
    every layer, and on the bench shape keeping only the matmul outputs was 11% faster and needed
    40% less temporary memory (notes/PERFORMANCE.md).
    """
    if remat is True:
        return "nothing_saveable"
    if not remat:
        return SCAN_DEFAULT_POLICY if scan else None
    if remat not in REMAT_POLICIES:
        raise ValueError(f"remat policy {remat!r} is not one of {', '.join(REMAT_POLICIES)} (or true / false)")
    return remat


def run_layers(parent: nn.Module, layer_cls: type[nn.Module], layer_args: Callable[[int], tuple], n: int,
               prefix: str, x: jax.Array, *args: Any, train: bool, remat: bool | str, scan: bool) -> jax.Array:
    """`x = layer_i(x, *args, train)` for i < n, with layer i's params at `{prefix}{i}` of `parent`.

    Unrolled, XLA compiles n copies of the layer. With `scan`, the per-layer param trees (kept as
    they are: HF names, freeze presets and sharding by layer all see `layer_{i}`) are stacked inside
    the step and one layer body runs under `jax.lax.scan`, so compile time stays flat in depth;
    the gradient flows back through the stack to each layer's own leaves. Layer i is
    `layer_cls(*layer_args(i))`; scanning uses `layer_args(0)` for all, so a layer whose fields
    depend on i must not be scanned. Dropout keys: the parent's `dropout` stream folded with i.
    `remat` picks the checkpoint policy of each layer (`remat_policy`).
    """
    scan = scan and n > 1 and not parent.is_initializing()
    name = remat_policy(remat, scan)
    policy = getattr(jax.checkpoint_policies, name) if name else None
    if not scan:
        # Linen counts self as argnum 0, so `train` (a Python bool, static) is argnum len(args) + 2.
        cls = layer_cls if policy is None else nn.remat(layer_cls, static_argnums=(len(args) + 2,), policy=policy)
        for i in range(n):
            x = cls(*layer_args(i), name=f"{prefix}{i}")(x, *args, train)
        return x
    params = parent.variables["params"]
    stacked = jax.tree.map(lambda *leaves: jnp.stack(leaves), *[params[f"{prefix}{i}"] for i in range(n)])
    layer = layer_cls(*layer_args(0), parent=None)
    rng = parent.make_rng("dropout") if train else None

    def body(h, xs):
        layer_params, i = xs
        rngs = {"dropout": jax.random.fold_in(rng, i)} if rng is not None else {}
        return layer.apply({"params": layer_params}, h, *args, train, rngs=rngs), None

    body = jax.checkpoint(body, prevent_cse=False, policy=policy)
    x, _ = jax.lax.scan(body, x, (stacked, jnp.arange(n)))
    return x


def padding_mask(attention_mask_BxL: jax.Array | None) -> jax.Array | None:
    """1 = real token -> boolean key mask Bx1x1xL (True = may be attended to); None stays None."""
    if attention_mask_BxL is None:
        return None
    return (jnp.asarray(attention_mask_BxL) != 0)[:, None, None, :]


def causal_mask(length: int, attention_mask_BxL: jax.Array | None = None) -> jax.Array:
    """Query i sees keys j <= i (and only real keys): boolean 1x1xLxL or Bx1xLxL."""
    causal_1x1xLxL = jnp.tril(jnp.ones((length, length), bool))[None, None]
    pad = padding_mask(attention_mask_BxL)
    return causal_1x1xLxL if pad is None else causal_1x1xLxL & pad


def attend(q_BxLxD: jax.Array, k_BxLxD: jax.Array, v_BxLxD: jax.Array, mask_Bx1xLxL: jax.Array | None, *,
           num_heads: int, scale: float, dropout_rate: float = 0.0, dropout_rng: jax.Array | None = None) -> jax.Array:
    """Multi-head scaled dot-product attention over fused heads (D = H * K); returns BxLxD.

    Without dropout this is `jax.nn.dot_product_attention` (logits and softmax in float32; a query
    whose keys are all masked averages the values uniformly, never NaN). Attention-probability
    dropout (HF's `attention_probs_dropout_prob` / `attn_pdrop`) is not offered by that function, so
    training with it spells out the same math with a dropout mask between softmax and values
    (in bf16 with the heads moved first and a hand-written backward, `batched_matmul`).
    """
    B, L, D = q_BxLxD.shape
    split = lambda t: t.reshape(B, L, num_heads, D // num_heads)
    q, k, v = split(q_BxLxD), split(k_BxLxD), split(v_BxLxD)
    if dropout_rng is None or dropout_rate == 0.0:
        out_BxLxHxK = jax.nn.dot_product_attention(q, k, v, mask=mask_Bx1xLxL, scale=scale)
    elif q.dtype == jnp.float32:
        logits_BxHxLxL = jnp.einsum("bqhk,bshk->bhqs", q, k, preferred_element_type=jnp.float32) * scale
        probs = _dropped_softmax(logits_BxHxLxL, mask_Bx1xLxL, dropout_rate, dropout_rng).astype(v.dtype)
        out_BxLxHxK = jnp.einsum("bhqs,bshk->bqhk", probs, v, preferred_element_type=jnp.float32).astype(v.dtype)
    else:
        # bf16: heads moved to the front as arrays of their own, so the batched GEMMs forward and
        # backward are batch-leading NN/NT bf16 products, which XLA:CPU runs on its fast path
        # (notes/PERFORMANCE.md entry 23; in float32 the copies cost what the GEMMs gain).
        heads = lambda t: materialized_transpose(t, (0, 2, 1, 3), _first(t))
        logits_BxHxLxL = batched_matmul(heads(q), heads(k), True) * scale
        probs = _dropped_softmax(logits_BxHxLxL, mask_Bx1xLxL, dropout_rate, dropout_rng).astype(v.dtype)
        out_BxHxLxK = batched_matmul(probs, heads(v)).astype(v.dtype)
        out_BxLxHxK = materialized_transpose(out_BxHxLxK, (0, 2, 1, 3), _first(out_BxHxLxK))
    return out_BxLxHxK.reshape(B, L, D)


def _dropped_softmax(logits_BxHxLxL: jax.Array, mask_Bx1xLxL: jax.Array | None, rate: float,
                     rng: jax.Array) -> jax.Array:
    if mask_Bx1xLxL is not None:
        # Same fill value as jax.nn.dot_product_attention: finite, so fully masked rows stay finite.
        logits_BxHxLxL = jnp.where(mask_Bx1xLxL, logits_BxHxLxL, -0.7 * jnp.finfo(jnp.float32).max)
    probs = jax.nn.softmax(logits_BxHxLxL, axis=-1)
    keep = dropout_mask(rng, 1.0 - rate, probs.shape)
    return jnp.where(keep, probs / (1.0 - rate), 0.0)


def head_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def positions(length: int) -> jax.Array:
    """Absolute positions 0..L-1 (HF's default position_ids for a batch without a cache)."""
    return jnp.arange(length, dtype=jnp.int32)


def config_from_hf_dict(cls: type, d: dict, model_type: str) -> Any:
    """A frozen config dataclass from an HF config.json dict: keys that are not fields are ignored,
    JSON lists become tuples (hashable), and a different `model_type` is an error."""
    found = d.get("model_type", model_type)
    if found != model_type:
        raise ValueError(f"config model_type {found!r} is not {model_type!r}; supported: bert, gpt2")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def config_to_hf_dict(config: Any, model_type: str) -> dict:
    """The HF config.json fields of a config dataclass (tuples back to JSON lists)."""
    out = {"model_type": model_type}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def check_heads(hidden: int, heads: int, what: str) -> None:
    if heads <= 0 or hidden % heads:
        raise ValueError(f"{what}: hidden size {hidden} is not divisible by {heads} attention heads")


__all__ = ["ACTIVATIONS", "activation", "dense", "Dense", "matmul_acc32", "weight_grad", "materialized_transpose",
           "batched_matmul", "layer_norm", "embed", "Embed", "tied_logits",
           "Dropout", "dropout_mask", "threefry2x32", "padding_mask", "causal_mask", "run_layers", "remat_policy",
           "REMAT_POLICIES", "attend", "head_scale", "positions", "config_from_hf_dict", "config_to_hf_dict"]
