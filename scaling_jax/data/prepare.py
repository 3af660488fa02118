"""`prepare`: a corpus tokenized once, in parallel, into a store of memory-mapped shards with an index.

The tokenizer runs on batches of pieces through its Rust backend's `encode_batch`, which spreads
the texts over every core (a rayon pool; cap it with RAYON_NUM_THREADS). Each document is
followed by EOS. Shards are planned before anything is tokenized (consecutive pieces up to
`shard_bytes` of source), so a rerun knows which finished shards it can keep: a shard whose
sidecar names the same plan and tokenizer, with matching sizes and checksums, is skipped.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
from tqdm.auto import tqdm

from scaling_jax.data import shards
from scaling_jax.data.sources import Source, splits_cleanly
from scaling_jax.data.tokenizer import tokenizer_identity
from scaling_jax.errors import DataError, OutputExistsError

log = logging.getLogger(__name__)

SHARD_BYTES = 64 << 20  # source bytes per shard: a rerun redoes at most this much
PIECE_BYTES = 1 << 20  # source bytes per piece: the unit the cores share
# Source bytes per encode_batch call: two pieces per core keep every core busy; the call's
# encodings (ids, offsets, token strings: ~100 bytes per token) are what prepare holds in memory.
BATCH_BYTES = PIECE_BYTES * max(4, 2 * (os.cpu_count() or 1))


@contextlib.contextmanager
def _parallel_tokenizers() -> Iterator[None]:
    """TOKENIZERS_PARALLELISM=true while we encode (the CLI sets it false for everything else:
    a tokenizer used in parallel before a fork deadlocks its child); tokenizers reads it per call."""
    old = os.environ.get("TOKENIZERS_PARALLELISM")
    os.environ["TOKENIZERS_PARALLELISM"] = "true"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TOKENIZERS_PARALLELISM", None)
        else:
            os.environ["TOKENIZERS_PARALLELISM"] = old


def make_encoder(tokenizer) -> Callable[[list[str]], list[list[int]]]:
    """texts -> ids per text (no special tokens), in parallel through the fast tokenizer's backend
    (truncation and padding off, as `tokenizer(text, add_special_tokens=False)` gives); a slow
    tokenizer encodes one text at a time."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        log.warning("%s is a slow tokenizer: prepare tokenizes on one core", type(tokenizer).__name__)
        return lambda texts: [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    from tokenizers import Tokenizer
    fast = Tokenizer.from_str(backend.to_str())
    fast.no_truncation()
    fast.no_padding()

    def encode(texts: list[str]) -> list[list[int]]:
        with _parallel_tokenizers():
            return [e.ids for e in fast.encode_batch_fast(texts, add_special_tokens=False)]
    return encode


def eos_id(tokenizer) -> int | None:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


def _plan_hash(pieces: list[dict]) -> str:
    return hashlib.sha256(json.dumps(pieces, sort_keys=True).encode()).hexdigest()


def plan_shards(pieces: list[dict], shard_bytes: int) -> list[list[dict]]:
    """Consecutive pieces grouped into shards of at least `shard_bytes` source bytes (the last less)."""
    out, cur, size = [], [], 0
    for p in pieces:
        cur.append(p)
        size += p["bytes"]
        if size >= shard_bytes:
            out.append(cur)
            cur, size = [], 0
    if cur:
        out.append(cur)
    return out


@contextlib.contextmanager
def _locked(store: Path) -> Iterator[None]:
    """One writer per store (processes of one machine preparing the same cache wait for each other)."""
    with open(store / ".lock", "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _batches(pieces: list[dict], limit: int) -> Iterator[list[dict]]:
    cur, size = [], 0
    for p in pieces:
        cur.append(p)
        size += p["bytes"]
        if size >= limit:
            yield cur
            cur, size = [], 0
    if cur:
        yield cur


def _tokenize_shard(pieces: list[dict], source: Source, text_field: str, encode, eos: int | None,
                    dtype: np.dtype, vocab: int, bar) -> tuple[np.ndarray, np.ndarray]:
    parts, ends, n = [], [], 0
    eos_arr = np.asarray([eos], dtype) if eos is not None else None
    for batch in _batches(pieces, BATCH_BYTES):
        texts, doc_end = [], []
        for p in batch:
            t, e = source.read(p, text_field)
            texts += t
            doc_end += e
        for ids, end in zip(encode(texts) if texts else [], doc_end):
            arr = np.asarray(ids, np.int64)
            if arr.size and (arr.max() >= vocab or arr.min() < 0):
                raise DataError(f"the tokenizer produced id {int(arr.max())} outside its vocabulary of {vocab}")
            parts.append(arr.astype(dtype))
            n += arr.size
            if end:
                if eos_arr is not None:
                    parts.append(eos_arr)
                    n += 1
                ends.append(n)
        bar.update(sum(p["bytes"] for p in batch))
    tokens = np.concatenate(parts) if parts else np.zeros((0,), dtype)
    return tokens, np.asarray(ends, np.int64)


def _same(index: dict, source: Source, tok_id: dict, dtype: np.dtype, eos: int | None) -> bool:
    return (index.get("source") == source.identity and index.get("dtype") == dtype.str
            and {k: index.get("tokenizer", {}).get(k) for k in ("class", "sha256")} == tok_id
            and index.get("eos_id") == eos)


def prepare_store(store: Path, source: Source, tokenizer, *, text_field: str = "text",
                  shard_bytes: int | None = None, desc: str = "prepare", progress: bool = True) -> dict:
    """Tokenizes `source` into the store directory `store`; returns the index. A store already
    prepared from the same source and tokenizer is checked (every checksum) and kept, damaged or
    missing shards are rebuilt; a store of another source or tokenizer is never overwritten.
    `shard_bytes`: source bytes per shard (default SHARD_BYTES)."""
    store = Path(store)
    store.mkdir(parents=True, exist_ok=True)
    tok_id = tokenizer_identity(tokenizer)
    vocab = len(tokenizer)
    dtype = shards.token_dtype(vocab)
    eos = eos_id(tokenizer)
    with _locked(store):
        index_file = store / shards.INDEX
        old = None
        if index_file.is_file():
            try:
                old = json.loads(index_file.read_text())
            except (OSError, UnicodeDecodeError, json.JSONDecodeError):
                old = None  # a damaged index is derived data: rebuilt from the shards below
            old = old if isinstance(old, dict) else None
            if old is not None and not _same(old, source, tok_id, dtype, eos):
                what = ("tokenizer " + shards.describe_tokenizer(old.get("tokenizer", {})) + ", not the config's "
                        + shards.describe_tokenizer(tok_id)) if old.get("source") == source.identity \
                    else "another source (files, sizes or checksums differ)"
                raise OutputExistsError(f"{index_file}: this store holds tokens of {what}; nothing was changed. "
                                        f"Point data.prepared at a new directory, or delete this one")
        for tmp in store.glob("*.tmp.*"):  # an interrupted writer's leftovers (we hold the lock)
            tmp.unlink()
        plan = plan_shards(source.pieces, shard_bytes or SHARD_BYTES)
        sidecars = [{"format": shards.FORMAT, "plan": _plan_hash(p), "tokenizer": tok_id, "dtype": dtype.str,
                     "eos_id": eos} for p in plan]
        entries: list[dict | None] = [shards.finished_shard(store, i, s) for i, s in enumerate(sidecars)]
        todo = [i for i, e in enumerate(entries) if e is None]
        if todo:
            encode = make_encoder(tokenizer)
            total = sum(p["bytes"] for i in todo for p in plan[i])
            kept = len(plan) - len(todo)
            with tqdm(total=total, unit="B", unit_scale=True, disable=not progress, dynamic_ncols=True,
                      desc=f"{desc}: {len(todo)} shards" + (f" ({kept} done already)" if kept else "")) as bar:
                for i in todo:
                    tokens, ends = _tokenize_shard(plan[i], source, text_field, encode, eos, dtype, vocab, bar)
                    entries[i] = shards.write_shard(store, i, tokens, ends, sidecars[i])
        index = {"format": shards.FORMAT, "dtype": dtype.str, "eos_id": eos,
                 "tokenizer": {**tok_id, "vocab_size": vocab}, "source": source.identity,
                 "documents": sum(e["documents"] for e in entries), "tokens": sum(e["tokens"] for e in entries),
                 "source_bytes": source.total_bytes, "shards": entries}
        if old != index:
            shards.write_json_atomic(index_file, index)
        return index


def text_splitting(tokenizer) -> bool:
    """Whether plain-text files may be cut into pieces for this tokenizer (`sources.splits_cleanly`)."""
    return splits_cleanly(make_encoder(tokenizer))
