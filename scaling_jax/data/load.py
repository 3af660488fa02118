"""A config's data: the reader for `data.kind`, applied to the train / valid / test files or corpus."""
from __future__ import annotations

from scaling_jax.config import Config, packs
from scaling_jax.data.classification import load_classification
from scaling_jax.data.corpus import load_lm
from scaling_jax.data.dataset import Data
from scaling_jax.data.files import data_root
from scaling_jax.data.ner import load_ner
from scaling_jax.data.packing import segments_from_eos
from scaling_jax.errors import ConfigError


def load_data(cfg: Config, tokenizer) -> Data:
    if cfg.data.kind in ("lm_text", "tokens"):  # one reading path: prepared token stores
        return load_lm(cfg, tokenizer)
    root = data_root(cfg)
    if not cfg.data.train:
        raise ConfigError("data.train: no training files given")
    if cfg.data.kind == "conll":
        return load_ner(cfg, tokenizer, root)
    if cfg.data.kind == "classification":
        return load_classification(cfg, tokenizer, root)
    raise ConfigError(f"data.kind: unknown {cfg.data.kind!r}")
