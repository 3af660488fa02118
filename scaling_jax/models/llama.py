"""Llama-family decoders (Llama 2/3, SmolLM2, Qwen2, Mistral) in Flax Linen, laid out like HF's LlamaModel.

RMSNorm, rotary positions (`rope.py`, with the `rope_scaling` types), grouped-query attention, an
explicit head size, SwiGLU MLP, optional q/k/v/o and MLP biases, Mistral's sliding window, tied or
untied LM head. Positions are an explicit input and the attention mask is built in one function
(`ops.masks.decoder_mask`), so left-padded generation and packed rows reuse both. Decoding with a KV cache
(`models/generate.py`) runs the same blocks on a cache pytree.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from scaling_jax.errors import ConfigError
from scaling_jax.models.hf_config import check_heads
from scaling_jax.models.layers import positions as positions_of
from scaling_jax.models.layers import (Dtype, KernelsName, RMSNorm, dense, embed, run_layers,
                                       tied_logits, write_kv, write_positions)
from scaling_jax.models.rope import apply_rope, inv_frequencies, normalize_rope_scaling, rope_tables
from scaling_jax.ops import activation, get_kernels
from scaling_jax.ops.masks import combine, decoder_mask, segment_mask

TASKS = ("base", "causal_lm", "sequence_classification")
MODEL_TYPES = ("llama", "qwen2", "mistral")
LAYER_PREFIX = "layers_"


@dataclass(frozen=True)
class LlamaConfig:
    """The architecture fields of HF's LlamaConfig / Qwen2Config / MistralConfig (same names).

    `rope_theta` and `rope_scaling` are kept as 4.x names them; `rope_scaling` is None (plain RoPE)
    or sorted (key, value) pairs with `rope_type` (hashable). `num_key_value_heads` and `head_dim`
    default to the attention heads and hidden / heads. Biases: Llama's `attention_bias` puts biases
    on q, k, v and o; Qwen2 always has q/k/v biases and none on o; Mistral has none. `sliding_window`
    (Mistral): query i sees keys i - w + 1 .. i.
    """

    vocab_size: int = 32000
    hidden_size: int = 4096
    intermediate_size: int = 11008
    num_hidden_layers: int = 32
    num_attention_heads: int = 32
    num_key_value_heads: int | None = None
    head_dim: int | None = None
    hidden_act: str = "silu"
    max_position_embeddings: int = 2048
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: tuple | None = None
    attention_bias: bool = False
    mlp_bias: bool = False
    attention_dropout: float = 0.0
    sliding_window: int | None = None
    tie_word_embeddings: bool = False
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    pad_token_id: int | None = None
    model_type: str = "llama"

    def __post_init__(self):
        if self.model_type not in MODEL_TYPES:
            raise ConfigError(f"LlamaConfig: model_type {self.model_type!r} is not one of {', '.join(MODEL_TYPES)}")
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            check_heads(self.hidden_size, self.num_attention_heads, "LlamaConfig")
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling",
                               normalize_rope_scaling(self.rope_scaling, self.max_position_embeddings))
        if self.num_key_value_heads <= 0 or self.num_attention_heads % self.num_key_value_heads:
            raise ConfigError(f"LlamaConfig: num_attention_heads {self.num_attention_heads} is not a multiple of "
                              f"num_key_value_heads {self.num_key_value_heads}")
        if self.head_dim % 2:
            raise ConfigError(f"LlamaConfig: head_dim {self.head_dim} must be even for RoPE")
        if self.sliding_window is not None and (self.model_type != "mistral" or self.sliding_window < 1):
            raise ConfigError(f"LlamaConfig: sliding_window={self.sliding_window} needs model_type 'mistral' and "
                              f"a positive window")
        if self.model_type != "llama" and (self.attention_bias or self.mlp_bias):
            raise ConfigError(f"LlamaConfig: attention_bias / mlp_bias are Llama options; {self.model_type} "
                              f"fixes its biases")
        activation(self.hidden_act)

    # ------------------------------------------------------------------ HF config.json, both schemas

    @classmethod
    def from_hf_dict(cls, d: dict) -> "LlamaConfig":
        """From a config.json of transformers 5 (`rope_parameters`) or 4.x (top-level `rope_theta`
        and `rope_scaling`, which may be null). As transformers 5 reads them: a non-null
        `rope_scaling` wins over `rope_parameters`, and `rope_theta` inside the dict over the top level."""
        model_type = d.get("model_type", "llama")
        if model_type not in MODEL_TYPES:
            raise ConfigError(f"config model_type {model_type!r} is not one of {', '.join(MODEL_TYPES)}")
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
        if any(isinstance(v, dict) for v in rope.values()):
            raise ConfigError("config.json: per-layer-type rope_parameters are not supported")
        theta = float(rope.get("rope_theta", d.get("rope_theta", 10000.0)))
        max_pos = int(d.get("max_position_embeddings", 2048))
        sliding = None
        if model_type == "mistral":
            sliding = d.get("sliding_window")
        elif model_type == "qwen2" and d.get("use_sliding_window"):
            raise ConfigError("config.json: Qwen2 use_sliding_window=true (sliding layers from max_window_layers) "
                              "is not supported")
        names = {f.name for f in dataclasses.fields(cls)} - {"rope_theta", "rope_scaling", "sliding_window",
                                                             "attention_bias", "mlp_bias", "model_type"}
        kw: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names}
        if model_type == "llama":
            kw["attention_bias"] = bool(d.get("attention_bias", False))
            kw["mlp_bias"] = bool(d.get("mlp_bias", False))
        return cls(**kw, rope_theta=theta, rope_scaling=normalize_rope_scaling(rope, max_pos),
                   sliding_window=sliding, model_type=model_type)

    def to_hf_dict(self) -> dict:
        """config.json fields that transformers 5 and 4.x both read as this model: `rope_theta` and
        `rope_scaling` at the top level (4.x reads only those; null for plain RoPE) and the same in
        `rope_parameters` (transformers 5's schema, read when `rope_scaling` is null)."""
        out: dict[str, Any] = {"model_type": self.model_type}
        skip = {"model_type", "rope_scaling", "attention_bias", "mlp_bias", "sliding_window"}
        for f in dataclasses.fields(self):
            if f.name not in skip:
                v = getattr(self, f.name)
                out[f.name] = list(v) if isinstance(v, tuple) else v
        scaling = dict(self.rope_scaling) if self.rope_scaling else None
        out["rope_scaling"] = scaling
        out["rope_parameters"] = {"rope_type": "default", **(scaling or {}), "rope_theta": self.rope_theta}
        if self.model_type == "llama":
            out.update(attention_bias=self.attention_bias, mlp_bias=self.mlp_bias)
        elif self.model_type == "mistral":
            out["sliding_window"] = self.sliding_window
        else:
            out.update(use_sliding_window=False, sliding_window=None)
        return out

    # ------------------------------------------------------------------ derived

    @property
    def qkv_bias(self) -> bool:
        return self.model_type == "qwen2" or self.attention_bias

    @property
    def o_bias(self) -> bool:
        return self.model_type == "llama" and self.attention_bias

    @property
    def attention_scale(self) -> float:
        """Softmax temperature of q kᵀ: 1/sqrt(head_dim) (the one place a muP 1/head_dim would go)."""
        return 1.0 / math.sqrt(self.head_dim)


class LlamaAttention(nn.Module):
    config: LlamaConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxTxD, mask, cos_BxTxH, sin_BxTxH, train: bool, kv=None, index=None):
        c = self.config
        N, K, H = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        B, T, _ = x_BxTxD.shape
        kw = {"std": c.initializer_range, "dtype": self.dtype, "kernels": self.kernels}
        q_BxTxNxH = dense(N * H, ("embed", "heads"), use_bias=c.qkv_bias, name="q_proj", **kw)(x_BxTxD).reshape(
            B, T, N, H)
        k_BxTxKxH = dense(K * H, ("embed", "heads"), use_bias=c.qkv_bias, name="k_proj", **kw)(x_BxTxD).reshape(
            B, T, K, H)
        v_BxTxKxH = dense(K * H, ("embed", "heads"), use_bias=c.qkv_bias, name="v_proj", **kw)(x_BxTxD).reshape(
            B, T, K, H)
        q_BxTxNxH = apply_rope(q_BxTxNxH, cos_BxTxH, sin_BxTxH)
        k_BxTxKxH = apply_rope(k_BxTxKxH, cos_BxTxH, sin_BxTxH)
        kern = get_kernels(self.kernels)
        if kv is not None:  # decoding: write this chunk at `index`, attend over the whole cache
            kv = write_kv(kv, k_BxTxKxH, v_BxTxKxH, index)
            a_BxTxNxH = kern.cached_attention(q_BxTxNxH, kv["k"].astype(self.dtype), kv["v"].astype(self.dtype), mask,
                                              scale=c.attention_scale)
        else:
            rng = self.make_rng("dropout") if train and c.attention_dropout > 0 else None
            a_BxTxNxH = kern.attention(q_BxTxNxH, k_BxTxKxH, v_BxTxKxH, mask, scale=c.attention_scale,
                                       dropout_rate=c.attention_dropout, dropout_rng=rng)
        out_BxTxD = dense(c.hidden_size, ("heads", "embed"), use_bias=c.o_bias, name="o_proj", **kw)(
            a_BxTxNxH.reshape(B, T, N * H))
        return out_BxTxD if kv is None else (out_BxTxD, kv)


class LlamaMLP(nn.Module):
    """SwiGLU (Shazeer 2020): down(act(gate(x)) * up(x))."""

    config: LlamaConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxTxD):
        c = self.config
        kw = {"std": c.initializer_range, "dtype": self.dtype, "kernels": self.kernels, "use_bias": c.mlp_bias}
        g_BxTxF = dense(c.intermediate_size, ("embed", "mlp"), act=c.hidden_act, name="gate_proj", **kw)(x_BxTxD)
        u_BxTxF = dense(c.intermediate_size, ("embed", "mlp"), name="up_proj", **kw)(x_BxTxD)
        return dense(c.hidden_size, ("mlp", "embed"), name="down_proj", **kw)(g_BxTxF * u_BxTxF)


class LlamaBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then + mlp(norm(.)). With `kv` (a layer's cache) it also
    returns the updated cache."""

    config: LlamaConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxTxD, mask, cos_BxTxH, sin_BxTxH, train: bool, kv=None, index=None):
        c, kw = self.config, {"dtype": self.dtype, "kernels": self.kernels}
        h_BxTxD = RMSNorm(c.rms_norm_eps, self.dtype, name="input_layernorm")(x_BxTxD)
        out = LlamaAttention(c, **kw, name="self_attn")(h_BxTxD, mask, cos_BxTxH, sin_BxTxH, train, kv, index)
        a_BxTxD, kv = out if kv is not None else (out, None)
        x_BxTxD = x_BxTxD + a_BxTxD
        h_BxTxD = RMSNorm(c.rms_norm_eps, self.dtype, name="post_attention_layernorm")(x_BxTxD)
        x_BxTxD = x_BxTxD + LlamaMLP(c, **kw, name="mlp")(h_BxTxD)
        return x_BxTxD if kv is None else (x_BxTxD, kv)


class LlamaModel(nn.Module):
    """A Llama-family decoder with one task head; float32 logits (the final-norm hidden state for `base`).

    Params (notes/CONTRACTS.md): `embed_tokens`, `layers_{i}/{input_layernorm, self_attn/{q,k,v,o}_proj,
    post_attention_layernorm, mlp/{gate,up,down}_proj}`, `norm`, then `lm_head` (untied LM head) or
    `score` (sequence classification, read at the last position whose attention_mask is 1).

    Packed rows (data/packing.py) pass `segment_ids_BxL` (no attention across segments; 0 = padding),
    `positions_BxL` (restarting per segment, so RoPE and the window see each document alone) and, for
    sequence classification, `segment_ends_BxS` (each segment's last token): logits are then B x S x C.

    `positions_BxL` (B x T) default to 0..T-1 (HF's without a cache). With `cache` (see
    `models/generate.py`: per-layer k/v B x K x S x H, key positions and validity B x S, `index`),
    `attention_mask_BxT` marks this chunk's real tokens, the chunk is written at `cache["index"]`,
    and `(logits, cache)` is returned; `last_only` keeps only the last position's logits (B x 1 x V),
    all a prefill needs.
    """

    config: LlamaConfig
    task: str = "base"
    num_labels: int | None = None
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"
    remat: bool | str = False
    scan: bool = False

    @nn.compact
    def __call__(self, input_ids_BxT, attention_mask_BxT=None, token_type_ids_BxT=None, *, positions_BxL=None,
                 segment_ids_BxL=None, segment_starts_BxS=None, segment_ends_BxS=None, train: bool = False,
                 cache=None, last_only: bool = False):
        c = self.config
        if self.task not in TASKS:
            raise ConfigError(f"Llama task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.task == "sequence_classification" and not self.num_labels:
            raise ConfigError("Llama task 'sequence_classification' needs num_labels")
        if token_type_ids_BxT is not None:
            raise ConfigError("Llama models take no token_type_ids")
        B, T = input_ids_BxT.shape
        positions_BxT = jnp.broadcast_to(positions_of(T)[None], (B, T)) if positions_BxL is None else positions_BxL
        table = embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), std=c.initializer_range, dtype=self.dtype,
                      name="embed_tokens")
        x_BxTxD = table(input_ids_BxT)
        inv_freq, attention_factor = inv_frequencies(c.head_dim, c.rope_theta, c.rope_scaling)
        cos_BxTxH, sin_BxTxH = rope_tables(positions_BxT, inv_freq, attention_factor)
        if cache is None:
            if segment_ids_BxL is None:
                mask = decoder_mask(positions_BxT, positions_BxT, attention_mask_BxT, c.sliding_window)
            else:  # positions restart per segment: causal and window hold within one, segments apart
                mask = combine(decoder_mask(positions_BxT, positions_BxT, None, c.sliding_window),
                               segment_mask(segment_ids_BxL))
            x_BxTxD = run_layers(self, LlamaBlock, lambda i: (c, self.dtype, self.kernels), c.num_hidden_layers,
                                 LAYER_PREFIX, x_BxTxD, mask, cos_BxTxH, sin_BxTxH, train=train, remat=self.remat,
                                 scan=self.scan)
        else:
            cache = write_positions(cache, positions_BxT, attention_mask_BxT)
            mask = decoder_mask(positions_BxT, cache["pos"], cache["valid"], c.sliding_window)
            layers = []
            for i in range(c.num_hidden_layers):
                x_BxTxD, kv = LlamaBlock(c, self.dtype, self.kernels, name=f"{LAYER_PREFIX}{i}")(
                    x_BxTxD, mask, cos_BxTxH, sin_BxTxH, False, cache["layers"][i], cache["index"])
                layers.append(kv)
            cache = {**cache, "layers": layers, "index": cache["index"] + T}
            if last_only:  # a prefill needs the last position's logits only (rows are left-padded)
                x_BxTxD = x_BxTxD[:, -1:]
                attention_mask_BxT = None if attention_mask_BxT is None else attention_mask_BxT[:, -1:]
        x_BxTxD = RMSNorm(c.rms_norm_eps, self.dtype, name="norm")(x_BxTxD)
        out = self._head(x_BxTxD, table, attention_mask_BxT, segment_ends_BxS)
        return out if cache is None else (out, cache)

    def _head(self, x_BxTxD, table, attention_mask_BxT, segment_ends_BxS=None):
        c = self.config
        if self.task == "base":
            return x_BxTxD.astype(jnp.float32)
        if self.task == "causal_lm":
            if c.tie_word_embeddings:
                return tied_logits(x_BxTxD, table.embedding, self.dtype)
            return dense(c.vocab_size, ("embed", "vocab"), std=c.initializer_range, dtype=self.dtype,
                         kernels=self.kernels, use_bias=False, name="lm_head")(x_BxTxD).astype(jnp.float32)
        B, T, _ = x_BxTxD.shape
        if segment_ends_BxS is not None:  # packed rows: one pooled position per segment
            x_last = jnp.take_along_axis(x_BxTxD, segment_ends_BxS[:, :, None], axis=1)  # BxSxD
        else:
            if attention_mask_BxT is None:
                last_B = jnp.full((B,), T - 1, jnp.int32)
            else:
                last_B = jnp.max(jnp.where(jnp.asarray(attention_mask_BxT) != 0, positions_of(T)[None], 0), axis=-1)
            x_last = jnp.take_along_axis(x_BxTxD, last_B[:, None, None], axis=1)[:, 0]  # BxD
        score = dense(self.num_labels, ("embed", "classes"), std=c.initializer_range, dtype=self.dtype,
                      kernels=self.kernels, name="score", use_bias=False)
        return score(x_last).astype(jnp.float32)


__all__ = ["LlamaConfig", "LlamaModel", "TASKS", "MODEL_TYPES"]
