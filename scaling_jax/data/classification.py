"""Sequence classification data: JSON lines (`{"text": ..., "label": ...}`) or TSV (`label<TAB>text`)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from scaling_jax.data.arrays import ArrayDataset
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


def encode(examples: list[tuple[str, str]], tokenizer, label_names: list[str], seq_len: int) -> ArrayDataset:
    enc = tokenizer([t for t, _ in examples], truncation=True, max_length=seq_len, padding="max_length")
    index = {n: i for i, n in enumerate(label_names)}
    labels = np.asarray([index[label] for _, label in examples], np.int32)
    arrays = {"input_ids": np.asarray(enc["input_ids"], np.int32),
              "attention_mask": np.asarray(enc["attention_mask"], np.int32), "labels": labels}
    if "token_type_ids" in enc:
        arrays["token_type_ids"] = np.asarray(enc["token_type_ids"], np.int32)
    return ArrayDataset(arrays)


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
    ds = {k: encode(v, tokenizer, label_names, cfg.data.seq_len) if v else None for k, v in splits.items()}
    return Data(ds["train"], ds["valid"], ds["test"], label_names=label_names,
                notes={"train_examples": len(splits["train"])})
