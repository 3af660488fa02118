"""Plain-text corpora for causal LM: whole files tokenized, joined with EOS, cut into fixed windows."""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from scaling_jax.data.arrays import ArrayDataset
from scaling_jax.data.tokenizer import tokenizer_identity
from scaling_jax.errors import DataError

log = logging.getLogger(__name__)


def _cache_dir() -> Path:
    return Path(os.environ.get("SCALING_JAX_CACHE", Path.home() / ".cache" / "scaling_jax")) / "tokens"


def tokenize_files(files: Sequence[Path], tokenizer) -> np.ndarray:
    """Token ids of all files, each followed by EOS; cached by the hash of (file bytes, the tokenizer's
    full identity: `tokenizer_identity`)."""
    eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
    identity = json.dumps(tokenizer_identity(tokenizer), sort_keys=True).encode()
    pieces = []
    for f in files:
        data = Path(f).read_bytes()
        key = hashlib.sha256(data + identity).hexdigest()[:24]
        cached = _cache_dir() / f"{key}.npy"
        if cached.is_file():
            ids = np.load(cached)
        else:
            text = data.decode("utf-8", errors="replace")
            ids = np.asarray(tokenizer(text, add_special_tokens=False)["input_ids"], np.int32)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(f".{os.getpid()}.tmp.npy")
            np.save(tmp, ids)
            os.replace(tmp, cached)
        pieces.append(ids)
        if eos is not None:
            pieces.append(np.asarray([eos], np.int32))
    return np.concatenate(pieces) if pieces else np.zeros((0,), np.int32)


def windows(ids: np.ndarray, seq_len: int) -> ArrayDataset:
    """Non-overlapping windows of `seq_len` tokens (the remainder is dropped)."""
    n = len(ids) // seq_len
    if n == 0:
        raise DataError(f"corpus has {len(ids)} tokens, fewer than one window of {seq_len}")
    x = ids[: n * seq_len].reshape(n, seq_len).astype(np.int32)
    return ArrayDataset({"input_ids": x, "attention_mask": np.ones_like(x)})
