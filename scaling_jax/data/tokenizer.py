"""The tokenizer a run uses: `data.tokenizer`, else the pretrained model's own (never a hub name)."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from scaling_jax.config import Config, expand_path
from scaling_jax.data.bpe import train_bpe
from scaling_jax.data.files import train_files
from scaling_jax.errors import ConfigError
from scaling_jax.models import KNOWN_MODELS, fetch_model, load_tokenizer as load_hf_tokenizer


def resolve_model_dir(cfg: Config) -> Path | None:
    """`model.pretrained` as a local directory (a known alias fetched into the cache); None = from scratch."""
    if not cfg.model.pretrained:
        return None
    if cfg.model.pretrained in KNOWN_MODELS:
        return fetch_model(cfg.model.pretrained)
    return expand_path(cfg.model.pretrained)


def tokenizer_dir(cfg: Config) -> Path:
    """`data.tokenizer`, else the pretrained model's directory. With `data.bpe_vocab`, the directory
    of a BPE trained on the training files (data/bpe.py): `data.tokenizer`, default
    <run.dir>/tokenizer, trained there the first time."""
    if cfg.data.bpe_vocab:
        out = expand_path(cfg.data.tokenizer) if cfg.data.tokenizer else cfg.run_dir / "tokenizer"
        return train_bpe(train_files(cfg), cfg.data.bpe_vocab, out)
    if cfg.data.tokenizer:
        return expand_path(cfg.data.tokenizer)
    model_dir = resolve_model_dir(cfg)
    if model_dir is None:
        raise ConfigError("data.tokenizer: a model trained from scratch needs a tokenizer directory")
    return model_dir


def tokenizer_identity(tokenizer) -> dict[str, str]:
    """What decides a tokenizer's ids, hashed: {"class", "sha256"}. For a fast tokenizer the hash
    covers its whole serialized form (vocabulary, merges, normalizer, pre-tokenizer, added tokens),
    so two BPEs of one size with other merges never share cached or prepared token ids; a slow
    tokenizer hashes its vocabulary and added tokens."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        text = backend.to_str()
    else:
        text = json.dumps({"vocab": tokenizer.get_vocab(), "added": [str(t) for t in tokenizer.all_special_tokens]},
                          sort_keys=True)
    return {"class": type(tokenizer).__name__, "sha256": hashlib.sha256(text.encode()).hexdigest()}


def load_tokenizer(path: Path):
    """A local tokenizer directory: HF's own files via AutoTokenizer, or bare GPT-2 BPE files
    (vocab.json + merges.txt, as in ../shared/data/gpt2-tokenizer) via GPT2TokenizerFast."""
    path = Path(path)
    if not (path / "tokenizer_config.json").is_file() and not (path / "tokenizer.json").is_file() \
            and (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
        from transformers import GPT2TokenizerFast  # transformers is slow to import: only when used
        return GPT2TokenizerFast.from_pretrained(str(path), local_files_only=True)
    return load_hf_tokenizer(path)
