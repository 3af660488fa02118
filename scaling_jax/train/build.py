"""Set-up from a Config: tokenizer, datasets, model, trainable tree (LoRA), freeze labels, optimizer."""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from scaling_jax.config import Config, ConfigError, expand_path
from scaling_jax.data.arrays import ArrayDataset

log = logging.getLogger(__name__)


@dataclass
class Data:
    train: ArrayDataset
    valid: ArrayDataset | None
    test: ArrayDataset | None
    label_names: list[str] = field(default_factory=list)
    scheme: str = ""  # NER tag scheme read from the data (IOB1 / IOB2)
    notes: dict = field(default_factory=dict)


def data_root(cfg: Config) -> Path:
    return expand_path(cfg.data.root)


def resolve_model_dir(cfg: Config) -> Path | None:
    if not cfg.model.pretrained:
        return None
    from scaling_jax.models import fetch_model
    from scaling_jax.models.fetch import KNOWN_MODELS
    if cfg.model.pretrained in KNOWN_MODELS:
        return fetch_model(cfg.model.pretrained)
    return expand_path(cfg.model.pretrained)


def tokenizer_dir(cfg: Config) -> Path:
    if cfg.data.tokenizer:
        return expand_path(cfg.data.tokenizer)
    model_dir = resolve_model_dir(cfg)
    if model_dir is None:
        raise ConfigError("data.tokenizer: a model trained from scratch needs a tokenizer directory")
    return model_dir


def load_tokenizer(path: Path):
    """A local tokenizer directory: HF's own files via AutoTokenizer, or bare GPT-2 BPE files
    (vocab.json + merges.txt, as in ../shared/data/gpt2-tokenizer) via GPT2TokenizerFast."""
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file() \
            and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        from transformers import GPT2TokenizerFast
        return GPT2TokenizerFast.from_pretrained(str(path), local_files_only=True)
    from scaling_jax.models import load_tokenizer as load_hf_tokenizer
    return load_hf_tokenizer(path)


def load_data(cfg: Config, tokenizer) -> Data:
    root = data_root(cfg)
    if not cfg.data.train:
        raise ConfigError("data.train: no training files given")
    if cfg.data.kind == "lm_text":
        from scaling_jax.data.lm_text import exclude, resolve_files, tokenize_files, windows
        held_out = [*resolve_files(cfg.data.valid, root, "data.valid"),
                    *resolve_files(cfg.data.test, root, "data.test")]
        train_files = exclude(resolve_files(cfg.data.train, root, "data.train"), held_out)
        split = lambda pats, what: (windows(tokenize_files(resolve_files(pats, root, what), tokenizer),
                                            cfg.data.seq_len) if pats else None)
        train = windows(tokenize_files(train_files, tokenizer), cfg.data.seq_len)
        notes = {"train_files": len(train_files), "train_tokens": int(train.arrays["input_ids"].size)}
        return Data(train, split(cfg.data.valid, "data.valid"), split(cfg.data.test, "data.test"), notes=notes)
    if cfg.data.kind == "conll":
        from scaling_jax.data.ner import load_ner
        return load_ner(cfg, tokenizer, root)
    if cfg.data.kind == "classification":
        from scaling_jax.data.classification import load_classification
        return load_classification(cfg, tokenizer, root)
    raise ConfigError(f"data.kind: unknown {cfg.data.kind!r}")


def build_model(cfg: Config, num_labels: int | None = None, id2label: dict | None = None):
    """A `Pretrained` (ours): loaded from the HF directory / alias, or initialised from scratch."""
    from scaling_jax.models import BertConfig, GPT2Config, init_model, load_pretrained
    dtype = jnp.bfloat16 if cfg.model.dtype == "bfloat16" else jnp.float32
    if dtype == jnp.bfloat16 and jax.default_backend() == "cpu":
        from scaling_jax.hostmem import cpu_info
        info = cpu_info()
        if info["bf16_dots"] == "emulated":
            log.warning("model.dtype=bfloat16 on a CPU without bf16 dot instructions (%s): XLA emulates "
                        "them, so expect it slower than float32", info["cpu"])
    task = cfg.model.task
    num_labels = cfg.model.num_labels or num_labels
    needs_labels = task in ("token_classification", "sequence_classification")
    model_dir = resolve_model_dir(cfg)
    if model_dir is not None:
        return load_pretrained(model_dir, task=task, num_labels=num_labels if needs_labels else None,
                               id2label=id2label if needs_labels else None, dtype=dtype,
                               remat=cfg.model.remat_policy or cfg.model.remat, seed=cfg.train.seed,
                               scan_layers=cfg.model.scan_layers)
    m = cfg.model
    if m.family == "gpt2":
        mc = GPT2Config(vocab_size=m.vocab_size, n_positions=m.max_len, n_embd=m.d_model, n_layer=m.n_layers,
                        n_head=m.n_heads, n_inner=m.d_ff or None, resid_pdrop=m.dropout,
                        embd_pdrop=m.dropout, attn_pdrop=m.dropout)
    else:
        mc = BertConfig(vocab_size=m.vocab_size, hidden_size=m.d_model, num_hidden_layers=m.n_layers,
                        num_attention_heads=m.n_heads, intermediate_size=m.d_ff or 4 * m.d_model,
                        max_position_embeddings=m.max_len, hidden_dropout_prob=m.dropout,
                        attention_probs_dropout_prob=m.dropout)
    return init_model(mc, task, num_labels=num_labels if needs_labels else None, seed=cfg.train.seed,
                      dtype=dtype, remat=cfg.model.remat_policy or cfg.model.remat, scan_layers=cfg.model.scan_layers)


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
    from scaling_jax.train.freeze import make_freeze_labels
    logical = model.logical_axes()
    tree, param_fn = model.params, _identity
    presets, regexes = tuple(cfg.optim.freeze), tuple(cfg.optim.freeze_regex)
    if cfg.model.lora_rank > 0:
        from scaling_jax.train.lora import DEFAULT_TARGETS, init_lora, merge_lora
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


def save_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, default=str))


def count_params(tree: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(tree)))
