"""How a transformer's init, attention scale and output logits depend on its width: standard (SP) or muP.

muP is the maximal-update parametrization of Yang et al. 2022 ("Tensor Programs V", arXiv 2203.03466),
Table 3, in the form of its Table 8 for Adam with the output multiplier kept in the forward pass
(as the `mup` package's MuReadout does), relative to a base width d0 where muP equals SP:

| parameters | init std | Adam learning rate | forward |
| --- | --- | --- | --- |
| embeddings (wte, wpe; tied LM head), norms, biases | sigma | eta | |
| hidden matrices (q, k, v, attention out, MLP) | sigma sqrt(d0 / d) | eta d0 / d | |
| output logits (LM head, classifier) | sigma | eta | logits x d0 / d |
| attention | | | q k / head_dim instead of / sqrt(head_dim) |

The model reads the forward and init pieces here; the learning rates are the optimizer's
(`train/mup.py`, per-group through optax), which finds the hidden matrices by HIDDEN_KERNELS.
A model family uses it by taking a `parametrization` field and asking it for `attention_scale`,
`hidden_std` and `output_multiplier` (GPT-2 does; a Llama model does the same with its q/k/v/o and
MLP kernels and its LM head). The parameter tree is the same under both, and `fold_into_standard`
rewrites muP params so that a standard model (transformers' GPT2LMHeadModel) computes the same logits.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from scaling_jax.errors import ConfigError
from scaling_jax.tree import map_with_path_str

KINDS = ("sp", "mup")
# Kernels inside a numbered transformer layer (`h_3/attn/query/kernel`, `layers_0/mlp/up_proj/kernel`,
# and the stacked optimizer's `h_*/...`): the hidden matrices, both of whose dimensions grow with width.
HIDDEN_KERNELS = r"(^|/)(h|layers|encoder/layer)_[^/]+/(.+/)?kernel$"

# Per model type: (regex of the query projection's leaves, regex of the final norm's leaves) that
# `fold_into_standard` rescales. The final norm feeds only the output head in these decoders.
_FOLD = {"gpt2": (r"(^|/)h_\d+/attn/query/(kernel|bias)$", r"(^|/)ln_f/(scale|bias)$")}


@dataclass(frozen=True)
class Parametrization:
    """SP (`kind="sp"`, the standard GPT-2 / HF recipe) or muP relative to `base_width` d0.

    Frozen and hashable: a Flax module field."""

    kind: str = "sp"
    base_width: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f"model.parametrization: {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "mup" and self.base_width <= 0:
            raise ConfigError("model.base_width: muP (model.parametrization=mup) needs the base width d0 at which "
                              "it equals SP, e.g. the width whose learning rate you tuned")

    @property
    def is_mup(self) -> bool:
        return self.kind == "mup"

    def width_mult(self, width: int) -> float:
        """d / d0 under muP; 1 under SP."""
        return width / self.base_width if self.is_mup else 1.0

    def attention_scale(self, head_dim: int) -> float:
        """The factor on q . k: 1/sqrt(head_dim) (SP), 1/head_dim (muP: q and k become correlated
        during training, so their dot product grows like head_dim, not its square root)."""
        return 1.0 / head_dim if self.is_mup else 1.0 / math.sqrt(head_dim)

    def hidden_std(self, std: float, width: int) -> float:
        """Init std of a hidden matrix: std at the base width, shrinking like 1/sqrt(fan_in)."""
        return std / math.sqrt(self.width_mult(width))

    def output_multiplier(self, width: int) -> float:
        """The factor on the output logits: d0 / d under muP (the readout's 1/fan_in), 1 under SP."""
        return 1.0 / self.width_mult(width)

    def hidden_lr_multiplier(self, width: int) -> float:
        """Adam's learning rate on hidden matrices relative to the base rate: d0 / d under muP."""
        return 1.0 / self.width_mult(width)


SP = Parametrization()


def fold_into_standard(params: Any, parametrization: Parametrization, *, model_type: str, width: int,
                       head_dim: int, scale_attn_weights: bool = True, output_head: bool = True) -> Any:
    """muP params rewritten for a standard model of the same tree: the query projection times
    sqrt(head_dim) / head_dim (so q k / sqrt(head_dim) = muP's q k / head_dim; with
    `scale_attn_weights` false neither scales) and, when the model has an output head
    (`output_head`), the final norm's scale and bias times the output multiplier (the head is linear
    and bias-free, so m head(h) = head(m h)). SP params come back unchanged."""
    if not parametrization.is_mup:
        return params
    if model_type not in _FOLD:
        raise ConfigError(f"muP export: no fold rule for model type {model_type!r} (have {', '.join(_FOLD)})")
    query, final_norm = (re.compile(p) for p in _FOLD[model_type])
    q_factor = parametrization.attention_scale(head_dim) * math.sqrt(head_dim) if scale_attn_weights else 1.0
    out_factor = parametrization.output_multiplier(width) if output_head else 1.0

    def fold(path: str, x):
        if query.search(path):
            return x * q_factor
        if final_norm.search(path):
            return x * out_factor
        return x

    return map_with_path_str(fold, params)


__all__ = ["HIDDEN_KERNELS", "KINDS", "Parametrization", "SP", "fold_into_standard"]
