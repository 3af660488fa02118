"""Sequence classification data: JSON lines (`{"text": ..., "label": ...}`) or TSV (`label<TAB>text`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scaling_jax.config import packs
from scaling_jax.data.arrays import ArrayDataset
from scaling_jax.data.packing import pack
from scaling_jax.data.dataset import Data
from scaling_jax.data.files import resolve_files
from scaling_jax.errors import DataError


def read_examples(path: Path, text_field: str = "text", label_field: str = "label") -> list[tuple[str, str]]:
    out = []
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix in (".jsonl", ".json"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{n}: not valid JSON ({e.msg})") from e
            if not isinstance(row, dict) or text_field not in row or label_field not in row:
                raise DataError(
                    f"{path}:{n}: expected an object with '{text_field}' and '{label_field}'")
            out.append((str(row[text_field]), str(row[label_field])))
        else:
            parts = line.split("\t")
            if len(parts) != 2:
                raise DataError(f"{path}:{n}: expected 'label<TAB>text', got {len(parts)} fields")
            out.append((parts[1], parts[0]))
    if not out:
        raise DataError(f"{path}: no examples")
    return out


def encode(examples: list[tuple[str, str]], tokenizer, label_names: list[str], seq_len: int,
           packed: bool = False, what: str = "data") -> tuple[ArrayDataset, dict]:
    """Token ids of each text (truncated to seq_len, with a count in the notes and the log) and
    its label id: padded to seq_len, or (`packed`) packed into rows of seq_len with one label per
    segment (data/packing.py)."""
    texts = [t for t, _ in examples]
    index = {n: i for i, n in enumerate(label_names)}
    labels = np.asarray([index[label] for _, label in examples], np.int32)
    full = tokenizer(texts, truncation=False, verbose=False)
    truncated = sum(len(ids) > seq_len for ids in full["input_ids"])
    if truncated:
        print(f"[scaling_jax] {what}: {truncated} of {len(texts)} examples longer than data.seq_len={seq_len} "
              f"tokens were truncated to it", flush=True)
    notes = {"examples": len(texts), "truncated": truncated}
    enc = tokenizer(texts, truncation=True, max_length=seq_len)
    if packed:
        keys = [k for k in ("input_ids", "token_type_ids") if k in enc]
        rows = pack([{**{k: np.asarray(enc[k][i], np.int32) for k in keys}, "label": int(labels[i])}
                     for i in range(len(texts))], seq_len, pad_id=tokenizer.pad_token_id or 0)
        notes.update(rows=len(rows.placement), packing_efficiency=round(rows.efficiency, 4))
        return ArrayDataset(rows.arrays, meta={"placement": rows.placement}), notes
    enc = tokenizer.pad(enc, padding="max_length", max_length=seq_len)
    arrays = {"input_ids": np.asarray(enc["input_ids"], np.int32),
              "attention_mask": np.asarray(enc["attention_mask"], np.int32), "labels": labels}
    if "token_type_ids" in enc:
        arrays["token_type_ids"] = np.asarray(enc["token_type_ids"], np.int32)
    return ArrayDataset(arrays), notes


def load_classification(cfg, tokenizer, root: Path):
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    splits = {}
    for name in ("train", "valid", "test"):
        pats = getattr(cfg.data, name)
        files = resolve_files(pats, root, f"data.{name}") if pats else []
        splits[name] = [ex for f in files for ex in read_examples(f, cfg.data.text_field, cfg.data.label_field)]
    label_names = sorted({label for _, label in splits["train"]})
    for name in ("valid", "test"):
        unknown = {label for _, label in splits[name]} - set(label_names)
        if unknown:
            raise DataError(f"data.{name}: labels {sorted(unknown)} never occur in data.train")
    ds, notes = {}, {"train_examples": len(splits["train"])}
    for name, examples in splits.items():
        ds[name] = None
        if examples:
            ds[name], notes[name] = encode(examples, tokenizer, label_names, cfg.data.seq_len,
                                           packed=name == "train" and packs(cfg), what=f"data.{name}")
    if "rows" in notes["train"]:
        print(f"[scaling_jax] data.train: {notes['train']['examples']} examples packed into {notes['train']['rows']} "
              f"rows of {cfg.data.seq_len}: {notes['train']['packing_efficiency']:.1%} of token slots real", flush=True)
    return Data(ds["train"], ds["valid"], ds["test"], label_names=label_names, notes=notes)
