"""The tokenizer a run uses: `data.tokenizer`, else the pretrained model's own (never a hub name)."""
from __future__ import annotations

from pathlib import Path

from scaling_jax.config import Config, expand_path
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
        from transformers import GPT2TokenizerFast  # transformers is slow to import: only when used
        return GPT2TokenizerFast.from_pretrained(str(path), local_files_only=True)
    return load_hf_tokenizer(path)
