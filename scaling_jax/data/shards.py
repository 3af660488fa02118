"""Prepared token stores on disk: flat memory-mapped token shards, their document ends and the index.

A store is one split of one corpus, a directory of:

    shard-00000.tokens   the shard's token ids, a flat little-endian array (uint16 when the
                         vocabulary fits, else uint32), read through np.memmap
    shard-00000.docs     int64 ends (exclusive, within the shard) of the documents that end in it
    shard-00000.json     the shard's sidecar: its plan (which source bytes or rows it holds), the
                         tokenizer's identity, sizes and SHA-256 of both files; written last, so a
                         shard without its sidecar is unfinished
    index.json           written after every shard: tokenizer identity, the source's identity,
                         documents, tokens, and every shard's sizes and checksums

Every file is written as `<name>.tmp.<pid>`, fsynced and renamed, so an interrupted writer leaves
no file that looks complete. The split's tokens are the shards' tokens in order, one stream; a
document may continue into the next shard (its end is recorded where it ends).
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from scaling_jax.errors import DataError, MissingFileError

FORMAT = "scaling_jax.tokens/1"
INDEX = "index.json"
_HASH_CHUNK = 1 << 22  # bytes read per hashlib update


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def token_dtype(vocab_size: int) -> np.dtype:
    """uint16 when every id fits (vocab_size <= 65,536), else uint32."""
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<u4")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes | memoryview) -> None:
    """Writes `data` to `path` through a fsynced temporary file and a rename (a crash leaves either
    the old file, no file, or the whole new one; never a partial `path`)."""
    tmp = path.with_name(f"{path.name}.tmp.{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_atomic(path, (json.dumps(obj, indent=1, sort_keys=True) + "\n").encode())


def write_shard(store: Path, i: int, tokens: np.ndarray, doc_ends: np.ndarray, sidecar: dict) -> dict:
    """Writes shard `i` (tokens, document ends, then its sidecar last); returns the index entry."""
    name = shard_name(i)
    tokens = np.ascontiguousarray(tokens)
    ends = np.ascontiguousarray(doc_ends, dtype="<i8")
    tok_bytes, docs_bytes = memoryview(tokens).cast("B"), memoryview(ends).cast("B")
    write_atomic(store / f"{name}.tokens", tok_bytes)
    write_atomic(store / f"{name}.docs", docs_bytes)
    entry = {"name": name, "tokens": int(tokens.size), "documents": int(ends.size),
             "sha256": hashlib.sha256(tok_bytes).hexdigest(), "docs_sha256": hashlib.sha256(docs_bytes).hexdigest()}
    write_json_atomic(store / f"{name}.json", {**sidecar, **entry})
    return entry


def read_json(path: Path, what: str) -> dict:
    try:
        obj = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: unreadable {what} ({type(e).__name__}: {e}); rerun `scaling-jax prepare`") from e
    if not isinstance(obj, dict):
        raise DataError(f"{path}: {what} is not a JSON object; rerun `scaling-jax prepare`")
    return obj


def finished_shard(store: Path, i: int, sidecar: dict, verify: bool = True) -> dict | None:
    """The index entry of shard `i` when it is complete and was made from `sidecar`'s plan and
    tokenizer (sizes match, and with `verify` the checksums too); None when it must be redone."""
    name = shard_name(i)
    side = store / f"{name}.json"
    if not side.is_file():
        return None
    try:
        got = json.loads(side.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if any(got.get(k) != v for k, v in sidecar.items()):
        return None
    entry = {k: got.get(k) for k in ("name", "tokens", "documents", "sha256", "docs_sha256")}
    itemsize = np.dtype(sidecar["dtype"]).itemsize
    tok, docs = store / f"{name}.tokens", store / f"{name}.docs"
    if not tok.is_file() or not docs.is_file():
        return None
    if tok.stat().st_size != entry["tokens"] * itemsize or docs.stat().st_size != entry["documents"] * 8:
        return None
    if verify and (sha256_file(tok) != entry["sha256"] or sha256_file(docs) != entry["docs_sha256"]):
        return None
    return entry


@dataclass
class TokenStore:
    """An opened store: one memory map per shard, the document ends of the whole split, and the index.

    `read(start, stop)` returns tokens [start, stop) of the split's stream as int32, copying only
    those from the maps (the OS pages in what is touched; nothing else enters memory).
    """
    path: Path
    index: dict
    maps: list[np.memmap]
    starts: np.ndarray  # int64 [n_shards + 1]: stream offset of each shard, then the total
    doc_ends: np.ndarray  # int64 [documents]: stream offsets where documents end (exclusive)

    @property
    def n_tokens(self) -> int:
        return int(self.starts[-1])

    @property
    def n_documents(self) -> int:
        return int(self.doc_ends.size)

    def read(self, start: int, stop: int) -> np.ndarray:
        if not 0 <= start <= stop <= self.n_tokens:
            raise IndexError(f"tokens [{start}, {stop}) outside the store's {self.n_tokens}")
        if start == stop:
            return np.zeros((0,), np.int32)
        first = int(np.searchsorted(self.starts, start, side="right")) - 1
        if stop <= self.starts[first + 1]:  # one shard: the common case
            s = int(self.starts[first])
            return self.maps[first][start - s:stop - s].astype(np.int32)
        out, pos, i = np.empty(stop - start, np.int32), start, first
        while pos < stop:
            s, e = int(self.starts[i]), int(self.starts[i + 1])
            take = min(stop, e) - pos
            out[pos - start:pos - start + take] = self.maps[i][pos - s:pos - s + take]
            pos += take
            i += 1
        return out

    def verify(self) -> None:
        """Checks every shard's SHA-256 against the index (reads the whole store once)."""
        for entry in self.index["shards"]:
            for suffix, key in ((".tokens", "sha256"), (".docs", "docs_sha256")):
                f = self.path / f"{entry['name']}{suffix}"
                if sha256_file(f) != entry[key]:
                    raise DataError(f"{f}: checksum differs from {self.path / INDEX}; the shard is damaged, "
                                    f"rerun `scaling-jax prepare` to rebuild it")


def describe_tokenizer(identity: dict) -> str:
    return f"{identity.get('class')} sha256 {str(identity.get('sha256'))[:16]}"


def open_store(path: Path, tokenizer_identity: dict | None = None) -> TokenStore:
    """Opens a store read-only, checking the index against the shards (files present, sizes, the
    sidecars' sizes and checksums, document ends in order) and, when given, the tokenizer."""
    path = Path(path)
    index_file = path / INDEX
    if not index_file.is_file():
        raise MissingFileError(f"{path}: no {INDEX} (not prepared, or preparation did not finish); "
                               f"run `scaling-jax prepare CONFIG`")
    index = read_json(index_file, "index")
    if index.get("format") != FORMAT:
        raise DataError(f"{index_file}: format {index.get('format')!r}, expected {FORMAT!r}")
    if tokenizer_identity is not None:
        want = {k: tokenizer_identity[k] for k in ("class", "sha256")}
        have = {k: index.get("tokenizer", {}).get(k) for k in ("class", "sha256")}
        if want != have:
            raise DataError(f"{index_file}: prepared with tokenizer {describe_tokenizer(have)}, but the config's "
                            f"tokenizer is {describe_tokenizer(want)}; prepare again with this tokenizer "
                            f"(another data.prepared directory) or use the one it was prepared with")
    try:
        dtype = np.dtype(index["dtype"])
        shards = list(index["shards"])
        sizes = [int(s["tokens"]) for s in shards]
        ndocs = [int(s["documents"]) for s in shards]
    except (KeyError, TypeError, ValueError) as e:
        raise DataError(f"{index_file}: malformed index ({type(e).__name__}: {e}); rerun `scaling-jax prepare`") from e
    if sum(sizes) != index.get("tokens") or sum(ndocs) != index.get("documents"):
        raise DataError(f"{index_file}: totals ({index.get('tokens')} tokens, {index.get('documents')} documents) "
                        f"disagree with its shards ({sum(sizes)}, {sum(ndocs)}); rerun `scaling-jax prepare`")
    maps, ends = [], []
    starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)]).astype(np.int64)
    for k, entry in enumerate(shards):
        name = entry["name"]
        tok, docs, side = (path / f"{name}{s}" for s in (".tokens", ".docs", ".json"))
        for f in (tok, docs, side):
            if not f.is_file():
                raise DataError(f"{f}: missing, but {index_file} lists it; rerun `scaling-jax prepare`")
        got = tok.stat().st_size
        if got != sizes[k] * dtype.itemsize:
            raise DataError(f"{tok}: {got:,} bytes, but {index_file} says {sizes[k]:,} tokens of {dtype.name} "
                            f"({sizes[k] * dtype.itemsize:,} bytes): a truncated or foreign shard; rerun "
                            f"`scaling-jax prepare` to rebuild it")
        if docs.stat().st_size != ndocs[k] * 8:
            raise DataError(f"{docs}: {docs.stat().st_size:,} bytes, but {index_file} says {ndocs[k]} documents "
                            f"({ndocs[k] * 8} bytes); rerun `scaling-jax prepare`")
        sidecar = read_json(side, "shard sidecar")
        for key in ("tokens", "documents", "sha256", "docs_sha256"):
            if sidecar.get(key) != entry.get(key):
                raise DataError(f"{index_file}: disagrees with {side} on {key} ({entry.get(key)!r} vs "
                                f"{sidecar.get(key)!r}); rerun `scaling-jax prepare`")
        local = np.fromfile(docs, dtype="<i8")
        if local.size and (np.any(np.diff(local) < 0) or local[0] < 0 or local[-1] > sizes[k]):
            raise DataError(f"{docs}: document ends out of order or past the shard's {sizes[k]} tokens")
        ends.append(local + starts[k])
        maps.append(np.memmap(tok, dtype=dtype, mode="r", shape=(sizes[k],)) if sizes[k]
                    else np.zeros((0,), dtype))
    doc_ends = np.concatenate(ends) if ends else np.zeros((0,), np.int64)
    return TokenStore(path, index, maps, starts, doc_ends)
