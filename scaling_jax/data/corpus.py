"""A config's language-model corpus as prepared token stores: each split's source, where its store
lives (`data.prepared`/<split>, else the token cache), preparing it (`prepare_corpus`) and reading it
as windows (`load_lm`). `data.kind: lm_text` prepares on first use; `data.kind: tokens` only reads."""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from scaling_jax.config import Config, expand_path, packs
from scaling_jax.data import prepare, shards
from scaling_jax.data.dataset import Data
from scaling_jax.data.files import data_root, exclude, resolve_files
from scaling_jax.data.sources import Source, datasets_source, file_source
from scaling_jax.data.tokenizer import tokenizer_identity
from scaling_jax.data.tokens import TokenWindows, document_cut
from scaling_jax.errors import ConfigError, DataError, MissingFileError

SPLITS = ("train", "valid", "test")
# `datasets` split names read for each of ours.
DATASETS_SPLITS = {"train": ("train",), "valid": ("validation", "valid", "dev"), "test": ("test",)}


def cache_root() -> Path:
    return Path(os.environ.get("SCALING_JAX_CACHE", Path.home() / ".cache" / "scaling_jax")) / "tokens"


def _load_datasets(name: str):
    import datasets  # slow to import: only for a datasets source

    path = Path(expand_path(name))
    try:
        if path.is_dir() and ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
            ds = datasets.load_from_disk(str(path))  # a saved Dataset / DatasetDict
        else:
            ds = datasets.load_dataset(str(path) if path.exists() else name)  # data files or a hub copy
    except Exception as e:  # offline, missing, or a script-based dataset: the user's to fix
        raise DataError(f"data.source: could not load {name!r} with datasets ({type(e).__name__}: {e})") from e
    return ds if isinstance(ds, datasets.DatasetDict) else datasets.DatasetDict({"train": ds})


def split_sources(cfg: Config, tokenizer, progress: bool = False) -> dict[str, Source]:
    """The configured splits' sources: `data.source` (a `datasets` name, folder or saved dataset)
    and its train / validation / test splits, else the files of data.train / valid / test (files
    held out for valid or test are removed from train: whole works, never passages)."""
    d = cfg.data
    if d.source:
        ds = _load_datasets(d.source)
        out = {}
        for ours, names in DATASETS_SPLITS.items():
            hit = next((n for n in names if n in ds), None)
            if hit is not None:
                out[ours] = datasets_source(ds[hit], d.source, hit, d.text_field, prepare.PIECE_BYTES)
        if "train" not in out:
            raise DataError(f"data.source: {d.source!r} has no train split (splits: {', '.join(ds)})")
        return out
    root = data_root(cfg)
    if not d.train:
        raise ConfigError("data.train: no training files given (or set data.source)")
    files = {s: resolve_files(getattr(d, s), root, f"data.{s}") for s in SPLITS if getattr(d, s)}
    files["train"] = exclude(files["train"], [*files.get("valid", []), *files.get("test", [])])
    if not files["train"]:
        raise ConfigError("data.train: every training file is also held out in data.valid / data.test")
    split_text = prepare.text_splitting(tokenizer)
    return {s: file_source(f, d.text_field, prepare.PIECE_BYTES, split_text, progress) for s, f in files.items()}


def store_dir(cfg: Config, split: str, source: Source | None, tokenizer) -> Path:
    """`data.prepared`/<split>, else (lm_text) the cache directory keyed by the source's identity
    (files, sizes, SHA-256) and the tokenizer's (`tokenizer_identity`)."""
    if cfg.data.prepared:
        return expand_path(cfg.data.prepared) / split
    if cfg.data.kind == "tokens":
        raise ConfigError("data.prepared: data.kind=tokens reads a prepared directory; name it")
    assert source is not None
    key = json.dumps({"format": shards.FORMAT, "source": source.identity, "tokenizer": tokenizer_identity(tokenizer)},
                     sort_keys=True)
    return cache_root() / hashlib.sha256(key.encode()).hexdigest()[:24]


def prepare_corpus(cfg: Config, tokenizer, progress: bool = True) -> dict[str, Path]:
    """Prepares every configured split (skipping finished shards); returns {split: store directory}."""
    if cfg.data.kind not in ("lm_text", "tokens"):
        raise ConfigError(f"data.kind: prepare reads lm_text or tokens corpora, not {cfg.data.kind!r}")
    out = {}
    for split, source in split_sources(cfg, tokenizer, progress).items():
        path = store_dir(cfg, split, source, tokenizer)
        prepare.prepare_store(path, source, tokenizer, text_field=cfg.data.text_field, desc=f"prepare {split}",
                              progress=progress)
        out[split] = path
    return out


def load_lm(cfg: Config, tokenizer) -> Data:
    """Windows of every split. lm_text prepares its files first (once: the cache keeps them); tokens
    opens `data.prepared` as it is. Each store's tokenizer must be the config's."""
    ident = tokenizer_identity(tokenizer)
    if cfg.data.kind == "lm_text":
        dirs = prepare_corpus(cfg, tokenizer, progress=True)
    else:
        base = store_dir(cfg, "train", None, tokenizer).parent
        if not (base / "train").is_dir():
            raise MissingFileError(f"data.prepared: {base / 'train'} not found; run `scaling-jax prepare CONFIG` first")
        dirs = {s: base / s for s in SPLITS if (base / s).is_dir() or getattr(cfg.data, s)}
    stores = {s: shards.open_store(p, ident) for s, p in dirs.items()}
    L = cfg.data.seq_len
    train = stores["train"]
    cut = train.n_tokens
    held = cfg.data.valid_documents
    if held:
        if "valid" in stores:
            raise ConfigError("data.valid_documents: the corpus has its own valid split; use one or the other")
        cut = document_cut(train, held)
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    eos = eos if packs(cfg) else None  # data.pack: true = no attention across documents in a window
    splits = {"train": TokenWindows(train, L, 0, cut, eos_id=eos)}
    if held:
        splits["valid"] = TokenWindows(train, L, cut, train.n_tokens, eos_id=eos)
    for s in ("valid", "test"):
        if s in stores:
            splits[s] = TokenWindows(stores[s], L, eos_id=eos)
    notes = {"train_tokens": splits["train"].n_tokens, "train_documents": int(
        (train.doc_ends <= cut).sum()), "prepared": str(dirs["train"]), "document_masking": eos is not None}
    return Data(splits["train"], splits.get("valid"), splits.get("test"), notes=notes)
