"""Set-up from a Config: the model (pretrained or from scratch), the trainable tree (LoRA) and its freeze labels."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from scaling_jax.config import Config
from scaling_jax.data.tokenizer import resolve_model_dir
from scaling_jax import hostmem
from scaling_jax.models import BertConfig, GPT2Config, LlamaConfig, init_model, load_pretrained
from scaling_jax.models.parametrization import Parametrization
from scaling_jax.train.freeze import make_freeze_labels
from scaling_jax.train.lora import DEFAULT_TARGETS, init_lora, merge_lora

log = logging.getLogger(__name__)


def build_model(cfg: Config, num_labels: int | None = None, id2label: dict | None = None):
    """A `Pretrained` (ours): loaded from the HF directory / alias, or initialised from scratch."""
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    if dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        info = hostmem.cpu_info()
        if info["bf16_dots"] == "emulated":
            log.warning("model.dtype=bfloat16 on a CPU without bf16 dot instructions (%s): XLA emulates "
                        "them, so expect it slower than float32", info["cpu"])
    task = cfg.model.task
    num_labels = cfg.model.num_labels or num_labels
    needs_labels = task in ("token_classification", "sequence_classification")
    common = {"dtype": dtype, "remat": cfg.model.remat_policy or cfg.model.remat, "seed": cfg.train.seed,
              "scan_layers": cfg.model.scan_layers, "kernels": cfg.model.kernels}
    labels = {"num_labels": num_labels if needs_labels else None, "id2label": id2label if needs_labels else None}
    model_dir = resolve_model_dir(cfg)
    if model_dir is not None:
        return load_pretrained(model_dir, task=task, **labels, **common)
    m = cfg.model
    if m.family == "gpt2":
        mc = GPT2Config(vocab_size=m.vocab_size, n_positions=m.max_len, n_embd=m.d_model, n_layer=m.n_layers,
                        n_head=m.n_heads, n_inner=m.d_ff or None, resid_pdrop=m.dropout,
                        embd_pdrop=m.dropout, attn_pdrop=m.dropout)
    elif m.family == "llama":  # SmolLM2-like defaults: SwiGLU at 8/3 d_model, tied head, theta 1e5
        mc = LlamaConfig(vocab_size=m.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                         num_attention_heads=m.n_heads, num_key_value_heads=m.n_kv_heads or m.n_heads,
                         intermediate_size=m.d_ff or 8 * m.d_model // 3, max_position_embeddings=m.max_len,
                         rope_theta=100000.0, tie_word_embeddings=True, attention_dropout=m.dropout,
                         rms_norm_eps=1e-5)
    else:
        mc = BertConfig(vocab_size=m.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                        num_attention_heads=m.n_heads, intermediate_size=m.d_ff or 4 * m.d_model,
                        max_position_embeddings=m.max_len, hidden_dropout_prob=m.dropout,
                        attention_probs_dropout_prob=m.dropout)
    if m.parametrization != "sp":  # config.validate allows mup only where the family takes it
        common["parametrization"] = parametrization_of(cfg)
    return init_model(mc, task, **labels, **common)


def parametrization_of(cfg: Config) -> Parametrization:
    """The model's `Parametrization` from `model.parametrization` and `model.base_width`."""
    return Parametrization(cfg.model.parametrization, cfg.model.base_width)


@dataclass
class Trainable:
    """What the optimizer updates: the params, or {"base", "lora"} when LoRA is on."""

    tree: Any
    logical: Any
    param_fn: Callable[[Any], Any]
    freeze_labels: Any | None
    report: dict


def _identity(t):
    return t


def make_trainable(cfg: Config, model) -> Trainable:
    logical = model.logical_axes()
    tree, param_fn = model.params, _identity
    presets, regexes = tuple(cfg.optim.freeze), tuple(cfg.optim.freeze_regex)
    if cfg.model.lora_rank > 0:
        lora = init_lora(model.params, cfg.model.lora_targets or DEFAULT_TARGETS, cfg.model.lora_rank,
                         cfg.model.lora_alpha, jax.random.PRNGKey(cfg.train.seed + 1))
        tree = {"base": model.params, "lora": lora}
        flat_logical = {tuple(k.key for k in path): spec for path, spec in
                        jax.tree_util.tree_leaves_with_path(logical, is_leaf=lambda x: isinstance(x, P))}

        def lora_axes(path, x):
            keys = tuple(k.key for k in path)
            kernel_spec = tuple(flat_logical.get(keys[:-1] + ("kernel",), P(None, None)))
            return P(kernel_spec[0], None) if keys[-1] == "a" else P(None, kernel_spec[-1])

        logical = {"base": logical, "lora": jax.tree_util.tree_map_with_path(lora_axes, lora)}
        alpha, rank = cfg.model.lora_alpha, cfg.model.lora_rank
        param_fn = lambda t: merge_lora(t["base"], t["lora"], alpha, rank)
        presets = presets or ("all_but_head",)
    labels, report = (None, {})
    if presets or regexes:
        labels, report = make_freeze_labels(tree, presets=presets, regexes=regexes)
    return Trainable(tree, logical, param_fn, labels, report)


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
