"""BERT (Devlin et al. 2019) in Flax Linen, laid out like HF's BertModel so checkpoints map 1:1."""
from __future__ import annotations

from dataclasses import dataclass

import flax.linen as nn
import jax.numpy as jnp

from scaling_jax.errors import ConfigError
from scaling_jax.models.hf_config import check_heads, config_from_hf_dict, config_to_hf_dict
from scaling_jax.models.layers import (Dropout, Dtype, KernelsName, attend, dense, embed, head_scale, layer_norm,
                                       positions, run_layers, tied_logits)
from scaling_jax.ops import activation
from scaling_jax.ops.masks import padding_mask, segment_mask

TASKS = ("base", "token_classification", "sequence_classification", "masked_lm")


@dataclass(frozen=True)
class BertConfig:
    """The architecture fields of HF's BertConfig (same names and defaults: bert-base-uncased).

    Frozen and hashable, so it can be a Linen module attribute. Task-level fields (num_labels,
    id2label) live on `Pretrained`, not here.
    """

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int | None = 0
    classifier_dropout: float | None = None
    position_embedding_type: str = "absolute"
    is_decoder: bool = False
    add_cross_attention: bool = False
    tie_word_embeddings: bool = True

    model_type = "bert"

    def __post_init__(self):
        check_heads(self.hidden_size, self.num_attention_heads, "BertConfig")
        activation(self.hidden_act)
        if self.position_embedding_type != "absolute":
            raise ConfigError(f"BertConfig: position_embedding_type {self.position_embedding_type!r} is not "
                              f"supported (only 'absolute')")
        if self.is_decoder or self.add_cross_attention:
            raise ConfigError("BertConfig: decoder / cross-attention BERT is not supported")

    @classmethod
    def from_hf_dict(cls, d: dict) -> "BertConfig":
        """From a config.json dict; keys that are not architecture fields are ignored."""
        return config_from_hf_dict(cls, d, cls.model_type)

    def to_hf_dict(self) -> dict:
        return config_to_hf_dict(self, self.model_type)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


class BertEmbeddings(nn.Module):
    """word + token type + absolute position embeddings, LayerNorm, dropout (HF BertEmbeddings)."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    def setup(self):
        c, std = self.config, self.config.initializer_range
        self.word_embeddings = embed(c.vocab_size, c.hidden_size, ("vocab", "embed"), std=std, dtype=self.dtype,
                                     name="word_embeddings")
        self.position_embeddings = embed(c.max_position_embeddings, c.hidden_size, (None, "embed"), std=std,
                                         dtype=self.dtype, name="position_embeddings")
        self.token_type_embeddings = embed(c.type_vocab_size, c.hidden_size, (None, "embed"), std=std,
                                           dtype=self.dtype, name="token_type_embeddings")
        self.LayerNorm = layer_norm(c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")
        self.dropout = Dropout(c.hidden_dropout_prob, self.kernels)

    def __call__(self, input_ids_BxL, token_type_ids_BxL, positions_BxL, train: bool):
        L = input_ids_BxL.shape[1]
        if L > self.config.max_position_embeddings:
            raise ConfigError(f"sequence length {L} exceeds max_position_embeddings "
                              f"{self.config.max_position_embeddings}")
        if token_type_ids_BxL is None:
            token_type_ids_BxL = jnp.zeros_like(input_ids_BxL)
        pos_BxLxD = self.position_embeddings(positions(L)[None] if positions_BxL is None else positions_BxL)
        x_BxLxD = self.word_embeddings(input_ids_BxL) + self.token_type_embeddings(token_type_ids_BxL) + pos_BxLxD
        return self.dropout(self.LayerNorm(x_BxLxD), deterministic=not train)

    def attend(self, x_BxLxD):
        """Float32 logits over the vocabulary with the word embeddings as the output matrix (tied)."""
        return tied_logits(x_BxLxD, self.word_embeddings.embedding, self.dtype)


class BertSelfAttention(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL, train: bool):
        c = self.config
        proj = lambda name: dense(c.hidden_size, ("embed", "heads"), std=c.initializer_range, dtype=self.dtype,
                                  kernels=self.kernels, name=name)(x_BxLxD)
        q_BxLxD, k_BxLxD, v_BxLxD = proj("query"), proj("key"), proj("value")
        rate = c.attention_probs_dropout_prob
        rng = self.make_rng("dropout") if train and rate > 0 else None
        return attend(q_BxLxD, k_BxLxD, v_BxLxD, mask_Bx1x1xL, num_heads=c.num_attention_heads,
                      scale=head_scale(c.head_dim), dropout_rate=rate, dropout_rng=rng, kernels=self.kernels)


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(x + residual): HF's BertSelfOutput and BertOutput."""

    config: BertConfig
    in_axis: str
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxF, residual_BxLxD, train: bool):
        c = self.config
        h_BxLxD = dense(c.hidden_size, (self.in_axis, "embed"), std=c.initializer_range, dtype=self.dtype,
                        kernels=self.kernels, name="dense")(x_BxLxF)
        h_BxLxD = Dropout(c.hidden_dropout_prob, self.kernels)(h_BxLxD, deterministic=not train)
        return layer_norm(c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(h_BxLxD + residual_BxLxD)


class BertAttention(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL, train: bool):
        kw = {"dtype": self.dtype, "kernels": self.kernels}
        a_BxLxD = BertSelfAttention(self.config, **kw, name="self")(x_BxLxD, mask_Bx1x1xL, train)
        return BertResidualOutput(self.config, "heads", **kw, name="output")(a_BxLxD, x_BxLxD, train)


class BertIntermediate(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxD):
        c = self.config
        return dense(c.intermediate_size, ("embed", "mlp"), std=c.initializer_range, dtype=self.dtype,
                     act=c.hidden_act, kernels=self.kernels, name="dense")(x_BxLxD)


class BertLayer(nn.Module):
    """Post-LN block: attention + residual LayerNorm, then the FFN + residual LayerNorm."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL, train: bool):
        kw = {"dtype": self.dtype, "kernels": self.kernels}
        a_BxLxD = BertAttention(self.config, **kw, name="attention")(x_BxLxD, mask_Bx1x1xL, train)
        h_BxLxF = BertIntermediate(self.config, **kw, name="intermediate")(a_BxLxD)
        return BertResidualOutput(self.config, "mlp", **kw, name="output")(h_BxLxF, a_BxLxD, train)


class BertEncoder(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"
    remat: bool | str = False  # True = recompute layers in the backward pass; or a REMAT_POLICIES name
    scan: bool = False

    @nn.compact
    def __call__(self, x_BxLxD, mask_Bx1x1xL, train: bool):
        return run_layers(self, BertLayer, lambda i: (self.config, self.dtype, self.kernels),
                          self.config.num_hidden_layers, "layer_", x_BxLxD, mask_Bx1x1xL, train=train,
                          remat=self.remat, scan=self.scan)


class BertPooler(nn.Module):
    """tanh(dense(x)) of the hidden state of each sequence's first token ([CLS]): HF's BertPooler,
    applied to x_BxD or, in packed rows, x_BxSxD (one per segment)."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_first):
        c = self.config
        h = dense(c.hidden_size, ("embed", None), std=c.initializer_range, dtype=self.dtype, kernels=self.kernels,
                  name="dense")
        return jnp.tanh(h(x_first))


class BertPredictionHeadTransform(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxD):
        c = self.config
        h_BxLxD = dense(c.hidden_size, ("embed", None), std=c.initializer_range, dtype=self.dtype,
                        act=c.hidden_act, kernels=self.kernels, name="dense")(x_BxLxD)
        return layer_norm(c.layer_norm_eps, dtype=self.dtype, name="LayerNorm")(h_BxLxD)


class BertLMPredictionHead(nn.Module):
    """transform, then the decoder tied to the word embeddings plus an output-only bias (HF
    `cls.predictions.decoder.weight` = `bert.embeddings.word_embeddings.weight`)."""

    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxD, embeddings: BertEmbeddings):
        h_BxLxD = BertPredictionHeadTransform(self.config, self.dtype, self.kernels, name="transform")(x_BxLxD)
        bias_V = self.param("bias", nn.with_logical_partitioning(nn.initializers.zeros_init(), ("vocab",)),
                            (self.config.vocab_size,), jnp.float32)
        return embeddings.attend(h_BxLxD) + bias_V


class BertOnlyMLMHead(nn.Module):
    config: BertConfig
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"

    @nn.compact
    def __call__(self, x_BxLxD, embeddings: BertEmbeddings):
        return BertLMPredictionHead(self.config, self.dtype, self.kernels, name="predictions")(x_BxLxD, embeddings)


class BertModel(nn.Module):
    """BERT with one task head; returns float32 logits (the last hidden state for task `base`).

    Params follow notes/CONTRACTS.md (`embeddings/...`, `encoder/layer_{i}/...`, `pooler/dense`,
    `classifier`, `cls/predictions/...`) and are float32; `dtype` is the compute dtype, `kernels`
    the ops backend. As in HF, `sequence_classification` and `base` have a pooler, the token and
    MLM heads do not.

    Packed rows (data/packing.py) pass `segment_ids_BxL` (attention stays inside a segment; 0 =
    padding), `positions_BxL` (restarting per segment) and, for sequence classification,
    `segment_starts_BxS` (each segment's [CLS]): logits are then B x S x C, one per segment.
    """

    config: BertConfig
    task: str = "base"
    num_labels: int | None = None
    dtype: Dtype = jnp.float32
    kernels: KernelsName = "auto"
    remat: bool | str = False  # True = recompute layers in the backward pass; or a REMAT_POLICIES name
    scan: bool = False  # run the layers under lax.scan (same params; compile time flat in depth)

    @nn.compact
    def __call__(self, input_ids_BxL, attention_mask_BxL=None, token_type_ids_BxL=None, *, positions_BxL=None,
                 segment_ids_BxL=None, segment_starts_BxS=None, segment_ends_BxS=None, train: bool = False):
        c, kw = self.config, {"dtype": self.dtype, "kernels": self.kernels}
        if self.task not in TASKS:
            raise ConfigError(f"BERT task {self.task!r} is not one of {', '.join(TASKS)}")
        classify = self.task in ("token_classification", "sequence_classification")
        if classify and not self.num_labels:
            raise ConfigError(f"BERT task {self.task!r} needs num_labels")
        embeddings = BertEmbeddings(c, **kw, name="embeddings")
        x_BxLxD = embeddings(input_ids_BxL, token_type_ids_BxL, positions_BxL, train)
        mask = padding_mask(attention_mask_BxL) if segment_ids_BxL is None else segment_mask(segment_ids_BxL)
        x_BxLxD = BertEncoder(c, **kw, remat=self.remat, scan=self.scan, name="encoder")(x_BxLxD, mask, train)
        if self.task == "base":
            if self.is_initializing():  # HF's BertModel has a pooler: create it so checkpoints round-trip
                BertPooler(c, **kw, name="pooler")(x_BxLxD[:, 0])
            return x_BxLxD.astype(jnp.float32)
        if self.task == "masked_lm":
            return BertOnlyMLMHead(c, **kw, name="cls")(x_BxLxD, embeddings)
        rate = c.classifier_dropout if c.classifier_dropout is not None else c.hidden_dropout_prob
        if self.task == "sequence_classification":
            first = x_BxLxD[:, 0] if segment_starts_BxS is None else jnp.take_along_axis(
                x_BxLxD, segment_starts_BxS[:, :, None], axis=1)  # BxD, or BxSxD for packed rows
            x = BertPooler(c, **kw, name="pooler")(first)
        else:
            x = x_BxLxD
        x = Dropout(rate, self.kernels)(x, deterministic=not train)
        classifier = dense(self.num_labels, ("embed", "classes"), std=c.initializer_range, name="classifier", **kw)
        return classifier(x).astype(jnp.float32)


__all__ = ["BertConfig", "BertModel", "TASKS"]
