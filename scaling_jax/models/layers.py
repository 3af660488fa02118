"""The layers every model shares: logically named Dense / Embed / LayerNorm, dropout, multi-head
attention over fused heads, and the layer stack (unrolled or scanned, with remat). Numerics go
through the kernel boundary (`scaling_jax.ops`), picked by the `kernels` attribute."""
from __future__ import annotations

import math
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling_jax.errors import ConfigError
from scaling_jax.ops import Kernels, get_kernels

Dtype = Any
KernelsName = Any  # "auto" | "xla" | "xla_cpu" | an ops.Kernels

# jax.checkpoint_policies names accepted as `model.remat_policy`.
REMAT_POLICIES = ("nothing_saveable", "everything_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
SCAN_DEFAULT_POLICY = "dots_with_no_batch_dims_saveable"


class Dense(nn.Module):
    """nn.Dense's params (kernel (in, out), bias (out,), float32) on the input flattened to 2-D,
    computed by the backend's `linear` in `dtype`; `act` (an ops.ACTIVATIONS name) is fused in.

    [B*L, D] @ [D, F] is one plain GEMM each way; a [B, L, D] @ [D, F] dot_general makes the
    kernel gradient contract over two axes, which XLA:CPU lowers with a transpose copy (2x slower
    for the 256 -> 1024 layer of the bench shape).
    """

    features: int
    axes: tuple[str | None, str | None]
    std: float
    dtype: Dtype = jnp.float32
    use_bias: bool = True
    act: str | None = None
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        kernel_DxF = self.param("kernel", nn.with_logical_partitioning(nn.initializers.normal(self.std), self.axes),
                                (x_BxLxD.shape[-1], self.features), jnp.float32)
        bias_F = None
        if self.use_bias:
            bias_F = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), (self.axes[1],)),
                                (self.features,), jnp.float32)
        y_MxF = get_kernels(self.kernels).linear(x_BxLxD.reshape(-1, x_BxLxD.shape[-1]), kernel_DxF, bias_F,
                                                 act=self.act, dtype=self.dtype)
        return y_MxF.reshape(*x_BxLxD.shape[:-1], self.features)


def dense(features: int, axes: tuple[str | None, str | None], *, std: float, dtype: Dtype, name: str,
          use_bias: bool = True, act: str | None = None, kernels: KernelsName = "auto") -> Dense:
    """A Dense whose (in, out) kernel and (out,) bias carry logical axis names; HF init N(0, std), bias 0."""
    return Dense(features, axes, std, dtype, use_bias, act, kernels, name=name)


def layer_norm(epsilon: float, *, dtype: Dtype, name: str) -> nn.LayerNorm:
    """torch.nn.LayerNorm's math: two-pass variance (Flax's default one-pass E[x²]-E[x]² loses ~1e-4
    at BERT scale), statistics in float32 whatever the compute dtype."""
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False, name=name,
                        scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                        bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ("norm",)))


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang & Sennrich 2019; HF's LlamaRMSNorm): x / sqrt(mean(x²) + eps) · scale,
    the statistics and the normalisation in float32 whatever the compute dtype, then cast and scaled."""

    epsilon: float
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x_BxLxD: jax.Array) -> jax.Array:
        scale_D = self.param("scale", nn.with_logical_partitioning(nn.initializers.ones_init(), ("norm",)),
                             (x_BxLxD.shape[-1],), jnp.float32)
        x32 = x_BxLxD.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
        return scale_D.astype(self.dtype) * y.astype(self.dtype)


class Embed(nn.Embed):
    """nn.Embed (same param, `attend`) whose lookup gathers float32 rows and then casts them.

    nn.Embed casts the whole table to `dtype` before the gather; gathering first touches only the
    looked-up rows and accumulates the gradient of repeated tokens in float32. Identical in float32.
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


class Dropout(nn.Module):
    """Inverted dropout (as nn.Dropout, `dropout` rng stream) with the backend's mask."""

    rate: float
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = get_kernels(self.kernels).dropout_mask(self.make_rng("dropout"), keep, x.shape)
        return jnp.where(mask, x / keep, 0.0).astype(x.dtype)


def attend(q_BxTxD: jax.Array, k_BxSxE: jax.Array, v_BxSxE: jax.Array, mask: jax.Array | None, *, num_heads: int,
           num_kv_heads: int | None = None, scale: float, dropout_rate: float = 0.0,
           dropout_rng: jax.Array | None = None, kernels: KernelsName = "auto") -> jax.Array:
    """Multi-head (or grouped-query) attention over fused heads: D = N H for queries, E = K H for
    keys and values; `mask` broadcasts to B x N x T x S. Returns B x T x D."""
    B, T, D = q_BxTxD.shape
    S = k_BxSxE.shape[1]
    K = num_kv_heads or num_heads
    H = D // num_heads
    out_BxTxNxH = get_kernels(kernels).attention(
        q_BxTxD.reshape(B, T, num_heads, H), k_BxSxE.reshape(B, S, K, H), v_BxSxE.reshape(B, S, K, H), mask,
        scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return out_BxTxNxH.reshape(B, T, D)


def write_kv(kv: dict, k_BxTxKxH: jax.Array, v_BxTxKxH: jax.Array, index: jax.Array) -> dict:
    """A layer's KV cache {"k", "v": B x K x S x H, heads first} with this chunk's keys and values
    written at slot `index` (a traced scalar: one compiled decode step serves every position)."""
    put = lambda c, x: jax.lax.dynamic_update_slice_in_dim(c, x.transpose(0, 2, 1, 3).astype(c.dtype), index, axis=2)
    return {"k": put(kv["k"], k_BxTxKxH), "v": put(kv["v"], v_BxTxKxH)}


def write_positions(cache: dict, positions_BxT: jax.Array, attention_mask_BxT: jax.Array | None) -> dict:
    """The cache with this chunk's key positions (`pos`, B x S) and validity (`valid`) written at
    `cache["index"]`; `attention_mask_BxT` None = all real tokens."""
    B, T = positions_BxT.shape
    valid_BxT = jnp.ones((B, T), bool) if attention_mask_BxT is None else jnp.asarray(attention_mask_BxT) != 0
    i = cache["index"]
    return {**cache, "pos": jax.lax.dynamic_update_slice_in_dim(cache["pos"], positions_BxT.astype(jnp.int32), i, 1),
            "valid": jax.lax.dynamic_update_slice_in_dim(cache["valid"], valid_BxT, i, 1)}


def head_scale(head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim)


def positions(length: int) -> jax.Array:
    """Absolute positions 0..L-1 (HF's default position_ids for a batch without a cache)."""
    return jnp.arange(length, dtype=jnp.int32)


def remat_policy(remat: bool | str, scan: bool) -> str | None:
    """The checkpoint policy name for `remat` (False | True | a REMAT_POLICIES name), or None.

    True = full recompute (`nothing_saveable`). False unrolled = plain autodiff (no checkpoint);
    False scanned = `dots_with_no_batch_dims_saveable`: a scan otherwise stacks every residual of
    every layer, and on the bench shape keeping only the matmul outputs was 11% faster and needed
    40% less temporary memory.
    """
    if remat is True:
        return "nothing_saveable"
    if not remat:
        return SCAN_DEFAULT_POLICY if scan else None
    if remat not in REMAT_POLICIES:
        raise ConfigError(f"remat policy {remat!r} is not one of {', '.join(REMAT_POLICIES)} (or true / false)")
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


__all__ = ["Dense", "Dropout", "Embed", "RMSNorm", "Kernels", "REMAT_POLICIES", "SCAN_DEFAULT_POLICY", "attend", "dense",
           "embed", "head_scale", "layer_norm", "positions", "remat_policy", "run_layers", "tied_logits",
           "write_kv", "write_positions"]
