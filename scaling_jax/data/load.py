"""A config's data: the reader for `data.kind`, applied to the train / valid / test files."""
from __future__ import annotations

from scaling_jax.config import Config, packs
from scaling_jax.data.classification import load_classification
from scaling_jax.data.dataset import Data
from scaling_jax.data.files import data_root, resolve_files, train_files
from scaling_jax.data.lm_text import tokenize_files, windows
from scaling_jax.data.ner import load_ner
from scaling_jax.data.packing import segments_from_eos
from scaling_jax.errors import ConfigError


def load_data(cfg: Config, tokenizer) -> Data:
    root = data_root(cfg)
    if not cfg.data.train:
        raise ConfigError("data.train: no training files given")
    if cfg.data.kind == "lm_text":
        files = train_files(cfg)
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        documents = packs(cfg) and eos is not None  # no attention across the documents inside a window

        def split(files):
            ds = windows(tokenize_files(files, tokenizer), cfg.data.seq_len)
            if documents:
                ds.arrays["segment_ids"], ds.arrays["positions"] = segments_from_eos(ds.arrays["input_ids"], eos)
            return ds

        train = split(files)
        held = {name: split(resolve_files(getattr(cfg.data, name), root, f"data.{name}"))
                if getattr(cfg.data, name) else None for name in ("valid", "test")}
        notes = {"train_files": len(files), "train_tokens": int(train.arrays["input_ids"].size),
                 "document_masking": documents}
        return Data(train, held["valid"], held["test"], notes=notes)
    if cfg.data.kind == "conll":
        return load_ner(cfg, tokenizer, root)
    if cfg.data.kind == "classification":
        return load_classification(cfg, tokenizer, root)
    raise ConfigError(f"data.kind: unknown {cfg.data.kind!r}")
