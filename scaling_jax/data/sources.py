"""Corpus sources for `prepare`: plain text, JSON lines and parquet files, or a `datasets` split,
cut into pieces (byte ranges, row groups, row ranges) that are read and tokenized independently.

A piece is a small JSON-able dict; `read_piece` turns it into texts and, per text, whether a
document ends after it (a plain-text file is one document, possibly in several pieces; a JSON
line or a row is one document). Pieces never cut a UTF-8 character, and a plain-text file is cut
only where a line break sits between two printable ASCII characters, so the pieces tokenize to the
ids of the whole file when the tokenizer's pre-tokenizer splits there anyway (checked per tokenizer
by `splits_cleanly`; byte-level BPE such as GPT-2's does).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

from tqdm.auto import tqdm

from scaling_jax.errors import DataError

TEXT_SUFFIXES = {".txt": "text", ".text": "text", ".md": "text", ".jsonl": "jsonl", ".json": "jsonl",
                 ".parquet": "parquet"}
_SCAN = 1 << 16  # bytes read at a time while looking for a place to cut


def file_format(path: Path) -> str:
    fmt = TEXT_SUFFIXES.get(Path(path).suffix.lower())
    if fmt is None:
        raise DataError(f"{path}: unknown corpus file type {Path(path).suffix!r}; use plain text (.txt), "
                        f"JSON lines (.jsonl, .json) or parquet (.parquet)")
    return fmt


def _printable(b: int) -> bool:
    return 0x21 <= b <= 0x7E


def _next_cut(f, offset: int, size: int, fmt: str) -> int:
    """The first cut at or after `offset`: after a newline (JSON lines), or after a newline between
    two printable ASCII characters (plain text); `size` when there is none."""
    pos = max(offset - 1, 0)
    while pos < size:
        f.seek(pos)
        buf = f.read(_SCAN + 2)
        if not buf:
            break
        i = buf.find(b"\n")
        while i != -1:
            if fmt != "text" or (0 < i < len(buf) - 1 and _printable(buf[i - 1]) and _printable(buf[i + 1])):
                if pos + i + 1 >= offset:
                    return pos + i + 1
            i = buf.find(b"\n", i + 1)
        pos += _SCAN
    return size


def line_of(path: Path, offset: int) -> int:
    """1-based line number of byte `offset` of `path`."""
    with open(path, "rb") as f:
        data = f.read(offset)
    return data.count(b"\n") + 1


@dataclass
class Source:
    """One split's corpus: its identity (what decides its tokens) and its pieces in order."""
    identity: dict
    pieces: list[dict]
    total_bytes: int
    reader: Any = field(default=None, repr=False)  # the `datasets` Dataset of a datasets source

    def read(self, piece: dict, text_field: str) -> tuple[list[str], list[bool]]:
        return read_piece(piece, text_field, self.reader)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()


def file_source(files: Sequence[Path], text_field: str, piece_bytes: int, split_text: bool,
                progress: bool = False) -> Source:
    """Pieces of local files (each file's format from its suffix). `split_text=False` keeps each
    plain-text file whole (a tokenizer whose ids change at a cut, see `splits_cleanly`). The files'
    SHA-256 go into the identity (a progress bar when `progress` and there are over 64 MiB)."""
    import pyarrow.parquet as pq  # pyarrow comes with datasets

    files = [Path(f).resolve() for f in files]
    for path in files:
        file_format(path)
    ident, pieces, total = [], [], 0
    size_all = sum(f.stat().st_size for f in files)
    bar = tqdm(total=size_all, unit="B", unit_scale=True, desc="hash sources", dynamic_ncols=True,
               disable=not progress or size_all < 64 << 20)
    for path in files:
        fmt = file_format(path)
        size = path.stat().st_size
        digest = _sha256(path)
        bar.update(size)
        ident.append({"path": str(path), "bytes": size, "sha256": digest, "format": fmt})
        base = {"file": str(path), "sha256": digest, "format": fmt}
        if fmt == "parquet":
            try:
                meta = pq.ParquetFile(path).metadata
            except Exception as e:  # pyarrow raises its own ArrowInvalid / OSError kinds
                raise DataError(f"{path}: not a readable parquet file ({type(e).__name__}: {e})") from e
            for g in range(meta.num_row_groups):
                rows = meta.row_group(g)
                pieces.append({**base, "row_group": g, "bytes": int(rows.total_byte_size)})
            total += size
            continue
        if size == 0:
            continue
        start = 0
        with open(path, "rb") as f:
            while start < size:
                stop = size
                if fmt == "jsonl" or split_text:
                    stop = _next_cut(f, start + piece_bytes, size, fmt) if start + piece_bytes < size else size
                pieces.append({**base, "start": start, "stop": stop, "last": stop == size, "bytes": stop - start})
                start = stop
        total += size
    bar.close()
    return Source({"kind": "files", "text_field": text_field, "files": ident}, pieces, total)


def datasets_source(dataset, name: str, split: str, text_field: str, piece_bytes: int) -> Source:
    """Pieces (row ranges of about `piece_bytes` of text) of a `datasets` split."""
    import numpy as np
    import pyarrow.compute as pc

    if text_field not in dataset.column_names:
        raise DataError(f"{name}[{split}]: no column {text_field!r} (columns: {dataset.column_names}); "
                        f"set data.text_field")
    if getattr(dataset, "_indices", None) is not None:  # a shuffled / selected view: rows in view order
        dataset = dataset.flatten_indices()
    column = dataset.data.column(text_field)
    lens = np.concatenate([pc.binary_length(c).to_numpy(zero_copy_only=False) for c in column.chunks]
                          or [np.zeros(0)]).astype(np.int64)
    lens = np.nan_to_num(lens)  # null rows: caught when read
    cum = np.cumsum(lens)
    pieces, start, n = [], 0, len(lens)
    fp = getattr(dataset, "_fingerprint", "")
    while start < n:
        base = cum[start - 1] if start else 0
        stop = int(np.searchsorted(cum, base + piece_bytes, side="left")) + 1
        stop = min(max(stop, start + 1), n)
        pieces.append({"dataset": name, "split": split, "fingerprint": fp, "rows": [start, stop],
                       "bytes": int(cum[stop - 1] - base)})
        start = stop
    identity = {"kind": "datasets", "dataset": name, "split": split, "fingerprint": fp, "rows": n,
                "text_field": text_field}
    return Source(identity, pieces, int(cum[-1]) if n else 0, reader=dataset)


def _decode(data: bytes, path: str, offset: int) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        at = offset + e.start
        raise DataError(f"{path} line {line_of(Path(path), at)}: not UTF-8 (byte 0x{data[e.start]:02x} at "
                        f"offset {at}); convert the file to UTF-8") from None


def read_piece(piece: dict, text_field: str, dataset=None) -> tuple[list[str], list[bool]]:
    """(texts, ends): the piece's texts and, per text, whether a document ends after it."""
    if "dataset" in piece:
        start, stop = piece["rows"]
        values = dataset.data.slice(start, stop - start).column(text_field).to_pylist()
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise DataError(f"{piece['dataset']}[{piece['split']}] row {start + i}: {text_field!r} is "
                                f"{type(v).__name__}, not text")
        return values, [True] * len(values)
    path, fmt = piece["file"], piece["format"]
    if fmt == "parquet":
        import pyarrow.parquet as pq
        pf = pq.ParquetFile(path)
        if text_field not in pf.schema_arrow.names:
            raise DataError(f"{path}: no column {text_field!r} (columns: {pf.schema_arrow.names}); set data.text_field")
        values = pf.read_row_group(piece["row_group"], columns=[text_field]).column(0).to_pylist()
        first = sum(pf.metadata.row_group(g).num_rows for g in range(piece["row_group"]))
        for i, v in enumerate(values):
            if not isinstance(v, str):
                raise DataError(f"{path} row {first + i}: {text_field!r} is {type(v).__name__}, not text")
        return values, [True] * len(values)
    with open(path, "rb") as f:
        f.seek(piece["start"])
        data = f.read(piece["stop"] - piece["start"])
    text = _decode(data, path, piece["start"])
    if fmt == "text":
        return [text], [bool(piece["last"])]
    texts, line0 = [], None
    for k, line in enumerate(text.split("\n")):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            line0 = line_of(Path(path), piece["start"]) if line0 is None else line0
            raise DataError(f"{path} line {line0 + k}: not valid JSON ({e.msg})") from None
        value = row.get(text_field) if isinstance(row, dict) else None
        if not isinstance(value, str):
            line0 = line_of(Path(path), piece["start"]) if line0 is None else line0
            raise DataError(f"{path} line {line0 + k}: expected an object with a text field {text_field!r} "
                            f"(set data.text_field)")
        texts.append(value)
    return texts, [True] * len(texts)


_PROBE = ("First line of the probe.\nSecond line, with words!\n(third) 'line' 42 -- end\n"
          "ROMEO: What, shall this speech be spoke?\nJULIET:\tAy me.\nlast")


def splits_cleanly(encode: Callable[[list[str]], list[list[int]]]) -> bool:
    """Whether cutting a text after a line break between two printable characters leaves its ids
    unchanged for this tokenizer (true for byte-level BPE and WordPiece; false where the tokenizer
    marks the start of each text, as SentencePiece's prefix space does)."""
    cuts = [i + 1 for i in range(1, len(_PROBE) - 1)
            if _PROBE[i] == "\n" and _printable(ord(_PROBE[i - 1])) and _printable(ord(_PROBE[i + 1]))]
    parts = [_PROBE[a:b] for a, b in zip([0, *cuts], [*cuts, len(_PROBE)])]
    whole, *pieces = encode([_PROBE, *parts])
    return list(whole) == [t for p in pieces for t in p]
