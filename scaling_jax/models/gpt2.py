"""GPT-2 (Radford et al. 2019) in Flax Linen, laid out like HF's GPT2Model with q/k/v kept apart."""
from __future__ import annotations

import math
from dataclasses import dataclass

import flax.linen as nn
import jax.numpy as jnp

from scaling_jax.errors import ConfigError
from scaling_jax.models.hf_config import check_heads, config_from_hf_dict, config_to_hf_dict
from scaling_jax.models.layers import (Dropout, Dtype, KernelsName, attend, dense, embed, layer_norm, positions,
                                       run_layers, tied_logits, write_kv, write_positions)
from scaling_jax.models.parametrization import SP, Parametrization
from scaling_jax.ops import activation, get_kernels
from scaling_jax.ops.masks import causal_mask, combine, decoder_mask, padding_mask, segment_mask

TASKS = ("base", "causal_lm", "sequence_classification")


@dataclass(frozen=True)
class GPT2Config:
    """The architecture fields of HF's GPT2Config (same names and defaults: gpt2 small).

    Frozen and hashable (JSON lists such as a list `eos_token_id` become tuples).
    """

    vocab_size: int = 50257
    n_positions: int = 1024
    n_embd: int = 768
    n_layer: int = 12
    n_head: int = 12
    n_inner: int | None = None  # None = 4 * n_embd
    activation_function: str = "gelu_new"
    resid_pdrop: float = 0.1
    embd_pdrop: float = 0.1
    attn_pdrop: float = 0.1
    layer_norm_epsilon: float = 1e-5
    initializer_range: float = 0.02
    scale_attn_weights: bool = True
    scale_attn_by_inverse_layer_idx: bool = False
    reorder_and_upcast_attn: bool = False  # HF: float32 attention logits; ours always are
    bos_token_id: int | None = 50256
    eos_token_id: int | tuple[int, ...] | None = 50256
    pad_token_id: int | None = None
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    model_type = "gpt2"

    def __post_init__(self):
        check_heads(self.n_embd, self.n_head, "GPT2Config")
        activation(self.activation_function)
        if self.add_cross_attention:
            raise ConfigError("GPT2Config: cross-attention GPT-2 is not supported")

    @classmethod
    def from_hf_dict(cls, d: dict) -> "GPT2Config":
        """From a config.json dict; keys that are not architecture fields are ignored."""
        return config_from_hf_dict(cls, d, cls.model_type)

    def to_hf_dict(self) -> dict:
        return config_to_hf_dict(self, self.model_type)

    @property
    def inner_dim(self) -> int:
        return self.n_inner if self.n_inner is not None else 4 * self.n_embd

    @property
    def head_dim(self) -> int:
        return self.n_embd // self.n_head

    # HF attribute_map aliases, so code can ask either family the same questions.
    @property
    def hidden_size(self) -> int:
        return self.n_embd

    @property
    def max_position_embeddings(self) -> int:
        return self.n_positions

    @property
    def num_hidden_layers(self) -> int:
        return self.n_layer

    @property
    def num_attention_heads(self) -> int:
        return self.n_head


class GPT2Attention(nn.Module):
    config: GPT2Config
    layer_idx: int
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"
    parametrization: Parametrization = SP

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, train: bool, kv=None, index=None):
        c, p = self.config, self.parametrization
        # HF keeps q/k/v fused in one Conv1D `c_attn`; separate Dense layers give each its own
        # ("embed", "heads") kernel for tensor parallelism, and hf.py splits/fuses on load/save.
        std = p.hidden_std(c.initializer_range, c.n_embd)
        proj = lambda name: dense(c.n_embd, ("embed", "heads"), std=std, dtype=self.dtype,
                                  kernels=self.kernels, name=name)(x_BxLxD)
        q_BxLxD, k_BxLxD, v_BxLxD = proj("query"), proj("key"), proj("value")
        scale = p.attention_scale(c.head_dim) if c.scale_attn_weights else 1.0
        if c.scale_attn_by_inverse_layer_idx:
            scale /= float(self.layer_idx + 1)
        rng = self.make_rng("dropout") if train and c.attn_pdrop > 0 else None
        if kv is None:
            a_BxLxD = attend(q_BxLxD, k_BxLxD, v_BxLxD, mask_Bx1xLxL, num_heads=c.n_head, scale=scale,
                             dropout_rate=c.attn_pdrop, dropout_rng=rng, kernels=self.kernels)
        else:  # decoding: this chunk's keys/values go to the cache at `index`; attend over all of it
            B, T, N, H = *x_BxLxD.shape[:2], c.n_head, c.head_dim
            kv = write_kv(kv, k_BxLxD.reshape(B, T, N, H), v_BxLxD.reshape(B, T, N, H), index)
            a_BxLxD = get_kernels(self.kernels).cached_attention(
                q_BxLxD.reshape(B, T, N, H), kv["k"].astype(self.dtype), kv["v"].astype(self.dtype), mask_Bx1xLxL,
                scale=scale).reshape(B, T, N * H)
        # GPT-2's scaled init of residual projections: std / sqrt(2 * n_layer).
        out_BxLxD = dense(c.n_embd, ("heads", "embed"), std=p.hidden_std(c.initializer_range, c.n_embd)
                          / math.sqrt(2 * c.n_layer), dtype=self.dtype, kernels=self.kernels, name="c_proj")(a_BxLxD)
        out_BxLxD = Dropout(c.resid_pdrop, self.kernels)(out_BxLxD, deterministic=not train)
        return out_BxLxD if kv is None else (out_BxLxD, kv)


class GPT2MLP(nn.Module):
    config: GPT2Config
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"
    parametrization: Parametrization = SP

    @nn.compact
    def __call__(self, x_BxLxD, train: bool):
        c, kw = self.config, {"dtype": self.dtype, "kernels": self.kernels}
        std = self.parametrization.hidden_std(c.initializer_range, c.n_embd)
        h_BxLxF = dense(c.inner_dim, ("embed", "mlp"), std=std, act=c.activation_function,
                        name="c_fc", **kw)(x_BxLxD)
        h_BxLxD = dense(c.n_embd, ("mlp", "embed"), std=std / math.sqrt(2 * c.n_layer),
                        name="c_proj", **kw)(h_BxLxF)
        return Dropout(c.resid_pdrop, self.kernels)(h_BxLxD, deterministic=not train)


class GPT2Block(nn.Module):
    """Pre-LN block: x + attn(ln_1(x)), then + mlp(ln_2(.))."""

    config: GPT2Config
    layer_idx: int
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"
    parametrization: Parametrization = SP

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1xLxL, train: bool, kv=None, index=None):
        c = self.config
        kw = {"dtype": self.dtype, "kernels": self.kernels, "parametrization": self.parametrization}
        h_BxLxD = layer_norm(c.layer_norm_epsilon, dtype=self.dtype, name="ln_1")(x_BxLxD)
        out = GPT2Attention(c, self.layer_idx, **kw, name="attn")(h_BxLxD, mask_Bx1xLxL, train, kv, index)
        a_BxLxD, kv = out if kv is not None else (out, None)
        x_BxLxD = x_BxLxD + a_BxLxD
        h_BxLxD = layer_norm(c.layer_norm_epsilon, dtype=self.dtype, name="ln_2")(x_BxLxD)
        x_BxLxD = x_BxLxD + GPT2MLP(c, **kw, name="mlp")(h_BxLxD, train)
        return x_BxLxD if kv is None else (x_BxLxD, kv)


class GPT2Model(nn.Module):
    """GPT-2 with one task head; returns float32 logits (the final-LN hidden state for task `base`).

    Params follow notes/CONTRACTS.md (`wte`, `wpe`, `h_{i}/...`, `ln_f`, `score`); the LM head is
    tied to `wte`. `sequence_classification` reads the last position whose attention_mask is 1
    (HF reads the last token that is not pad_token_id: the same for right padding with pads).

    Packed rows (data/packing.py) pass `segment_ids_BxL` (no attention across segments; 0 = padding),
    `positions_BxL` (restarting per segment) and, for sequence classification, `segment_ends_BxS`
    (each segment's last token): logits are then B x S x C.
    `positions_BxL` default to 0..L-1. With `cache` (`models/generate.py`), `attention_mask_BxL`
    marks this chunk's real tokens, the chunk is written at `cache["index"]`, and `(logits, cache)`
    is returned; `last_only` keeps only the last position's logits (B x 1 x V), all a prefill needs.

    `parametrization` (models/parametrization.py): SP, HF's GPT-2, or muP: hidden matrices
    initialised with std shrinking like 1/sqrt(width), attention over head_dim, task logits times
    base_width / width. Same params either way.
    """

    config: GPT2Config
    task: str = "base"
    num_labels: int | None = None
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"
    remat: bool | str = False  # True = recompute layers in the backward pass; or a REMAT_POLICIES name
    scan: bool = False  # run the blocks under lax.scan (same params; compile time flat in depth)
    parametrization: Parametrization = SP

    @nn.compact
    def __call__(self, input_ids_BxL, attention_mask_BxL=None, token_type_ids_BxL=None, *, positions_BxL=None,
                 segment_ids_BxL=None, segment_starts_BxS=None, segment_ends_BxS=None, train: bool = False,
                 cache=None, last_only: bool = False):
        c = self.config
        if self.task not in TASKS:
            raise ConfigError(f"GPT-2 task {self.task!r} is not one of {', '.join(TASKS)}")
        if self.task == "sequence_classification" and not self.num_labels:
            raise ConfigError("GPT-2 task 'sequence_classification' needs num_labels")
        B, L = input_ids_BxL.shape
        if L > c.n_positions:
            raise ConfigError(f"sequence length {L} exceeds n_positions {c.n_positions}")
        wte = embed(c.vocab_size, c.n_embd, ("vocab", "embed"), std=c.initializer_range, dtype=self.dtype, name="wte")
        wpe = embed(c.n_positions, c.n_embd, (None, "embed"), std=c.initializer_range, dtype=self.dtype, name="wpe")
        x_BxLxD = wte(input_ids_BxL) + wpe(positions(L)[None] if positions_BxL is None else positions_BxL)
        if token_type_ids_BxL is not None:  # as HF: token types are looked up in wte
            x_BxLxD = x_BxLxD + wte(token_type_ids_BxL)
        x_BxLxD = Dropout(c.embd_pdrop, self.kernels)(x_BxLxD, deterministic=not train)
        if cache is None:
            keys = padding_mask(attention_mask_BxL) if segment_ids_BxL is None else segment_mask(segment_ids_BxL)
            mask_Bx1xLxL = combine(causal_mask(L), keys)
            # A block depends on its index only through scale_attn_by_inverse_layer_idx: then unroll.
            scan = self.scan and not c.scale_attn_by_inverse_layer_idx
            x_BxLxD = run_layers(self, GPT2Block, lambda i: (c, i, self.dtype, self.kernels, self.parametrization),
                                 c.n_layer, "h_",
                                 x_BxLxD, mask_Bx1xLxL, train=train, remat=self.remat, scan=scan)
        else:
            pos_BxL = jnp.broadcast_to(positions(L)[None], (B, L)) if positions_BxL is None else positions_BxL
            cache = write_positions(cache, pos_BxL, attention_mask_BxL)
            mask = decoder_mask(pos_BxL, cache["pos"], cache["valid"])
            layers = []
            for i in range(c.n_layer):
                x_BxLxD, kv = GPT2Block(c, i, self.dtype, self.kernels, self.parametrization, name=f"h_{i}")(
                    x_BxLxD, mask, False, cache["layers"][i], cache["index"])
                layers.append(kv)
            cache = {**cache, "layers": layers, "index": cache["index"] + L}
            if last_only:  # a prefill needs the last position's logits only (rows are left-padded)
                x_BxLxD = x_BxLxD[:, -1:]
        x_BxLxD = layer_norm(c.layer_norm_epsilon, dtype=self.dtype, name="ln_f")(x_BxLxD)
        if cache is not None:
            if self.task != "causal_lm":
                raise ConfigError(f"a KV cache serves task 'causal_lm', not {self.task!r}")
            return self._readout(tied_logits(x_BxLxD, wte.embedding, self.dtype)), cache
        if self.task == "base":
            return x_BxLxD.astype(jnp.float32)
        if self.task == "causal_lm":
            return self._readout(tied_logits(x_BxLxD, wte.embedding, self.dtype))
        if segment_ends_BxS is not None:  # packed rows: one pooled position per segment
            x_last = jnp.take_along_axis(x_BxLxD, segment_ends_BxS[:, :, None], axis=1)  # BxSxD
        else:
            if attention_mask_BxL is None:
                last_B = jnp.full((B,), L - 1, jnp.int32)
            else:
                last_B = jnp.max(jnp.where(jnp.asarray(attention_mask_BxL) != 0, positions(L)[None], 0), axis=-1)
            x_last = jnp.take_along_axis(x_BxLxD, last_B[:, None, None], axis=1)[:, 0]  # BxD
        score = dense(self.num_labels, ("embed", "classes"), std=c.initializer_range, dtype=self.dtype,
                      kernels=self.kernels, name="score", use_bias=False)
        return self._readout(score(x_last).astype(jnp.float32))

    def _readout(self, logits):
        """muP's output multiplier on the task logits (none under SP)."""
        p = self.parametrization
        return logits * p.output_multiplier(self.config.n_embd) if p.is_mup else logits


__all__ = ["GPT2Config", "GPT2Model", "TASKS"]
