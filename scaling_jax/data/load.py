"""A config's data: the reader for `data.kind`, applied to the train / valid / test files."""
from __future__ import annotations

from scaling_jax.config import Config
from scaling_jax.data.classification import load_classification
from scaling_jax.data.dataset import Data
from scaling_jax.data.files import data_root, exclude, resolve_files
from scaling_jax.data.lm_text import tokenize_files, windows
from scaling_jax.data.ner import load_ner
from scaling_jax.errors import ConfigError


def load_data(cfg: Config, tokenizer) -> Data:
    root = data_root(cfg)
    if not cfg.data.train:
        raise ConfigError("data.train: no training files given")
    if cfg.data.kind == "lm_text":
        held_out = [*resolve_files(cfg.data.valid, root, "data.valid"),
                    *resolve_files(cfg.data.test, root, "data.test")]
        train_files = exclude(resolve_files(cfg.data.train, root, "data.train"), held_out)
        split = lambda pats, what: (windows(tokenize_files(resolve_files(pats, root, what), tokenizer),
                                            cfg.data.seq_len) if pats else None)
        train = windows(tokenize_files(train_files, tokenizer), cfg.data.seq_len)
        notes = {"train_files": len(train_files), "train_tokens": int(train.arrays["input_ids"].size)}
        return Data(train, split(cfg.data.valid, "data.valid"), split(cfg.data.test, "data.test"), notes=notes)
    if cfg.data.kind == "conll":
        return load_ner(cfg, tokenizer, root)
    if cfg.data.kind == "classification":
        return load_classification(cfg, tokenizer, root)
    raise ConfigError(f"data.kind: unknown {cfg.data.kind!r}")
