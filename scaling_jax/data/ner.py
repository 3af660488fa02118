"""NER task data: CoNLL splits -> aligned, windowed word-piece arrays; predictions -> seqeval scores."""
from __future__ import annotations

import logging
from collections import Counter
from pathlib import Path

import numpy as np

from scaling_jax.data.align import align_sentences, collate, decode_tags
from scaling_jax.data.arrays import ArrayDataset
from scaling_jax.data.conll import detect_scheme, entity_starts, label_set, read_conll
from scaling_jax.data.dataset import Data
from scaling_jax.config import packs
from scaling_jax.data.files import resolve_files
from scaling_jax.data.packing import pack
from scaling_jax.metrics import ner_report, ner_scores

log = logging.getLogger(__name__)


def _encode(sentences, tokenizer, label_to_id, seq_len: int, packed: bool = False) -> tuple[ArrayDataset, dict]:
    """Aligned windows, padded to seq_len, or (`packed`) packed into rows of seq_len (training)."""
    al = align_sentences(sentences, tokenizer, label_to_id=label_to_id, max_length=seq_len)
    notes = {"sentences": al.num_sentences, "windows": len(al.windows), "windowed": al.num_windowed,
             "unk_words": al.num_unk_words, "truncated_words": al.num_truncated_words}
    if packed:
        rows = pack([{"input_ids": w.input_ids, "labels": w.labels} for w in al.windows], seq_len,
                    pad_id=tokenizer.pad_token_id or 0)
        notes.update(rows=len(rows.placement), packing_efficiency=round(rows.efficiency, 4),
                     padded_efficiency=round(sum(len(w) for w in al.windows) / (len(al.windows) * seq_len), 4))
        return ArrayDataset(rows.arrays, meta={"placement": rows.placement}), notes
    arrays = collate(al.windows, length=seq_len, pad_id=tokenizer.pad_token_id or 0)
    return ArrayDataset(arrays, meta={"windows": al.windows, "sentences": sentences}), notes


def load_ner(cfg, tokenizer, root: Path):
    """Reads data.train/valid/test CoNLL files; the label set is read from all splits ('O' first)."""
    splits = {}
    for name in ("train", "valid", "test"):
        pats = getattr(cfg.data, name)
        files = resolve_files(pats, root, f"data.{name}") if pats else []
        splits[name] = [s for f in files for s in read_conll(f)]
    labels = label_set([s for v in splits.values() for s in v])
    scheme = detect_scheme(splits["train"])
    _warn_about_tags(splits, scheme)
    label_to_id = {t: i for i, t in enumerate(labels)}
    out, notes = {}, {"scheme": scheme}
    for name, sents in splits.items():
        if sents:
            out[name], n = _encode(sents, tokenizer, label_to_id, cfg.data.seq_len, packed=name == "train" and packs(cfg))
            notes[name] = n
        else:
            out[name] = None
    for name, n in notes.items():
        if isinstance(n, dict) and (n["windowed"] or n["truncated_words"]):
            print(f"[scaling_jax] data.{name}: {n['windowed']} sentences longer than data.seq_len="
                  f"{cfg.data.seq_len} pieces were split into windows; {n['truncated_words']} words "
                  f"truncated", flush=True)
        if isinstance(n, dict) and "rows" in n:
            print(f"[scaling_jax] data.{name}: {n['windows']} windows packed into {n['rows']} rows of "
                  f"{cfg.data.seq_len}: {n['packing_efficiency']:.1%} of token slots real "
                  f"({n['padded_efficiency']:.1%} padded one per row)", flush=True)
    return Data(out["train"], out["valid"], out["test"], label_names=labels, scheme=scheme, notes=notes)


def _warn_about_tags(splits: dict[str, list], scheme: str) -> None:
    """One warning each for what would otherwise pass unseen: the minority of entity starts in the
    detected scheme (stray `I-x` in IOB2 data), and tags that only valid/test use (their rows of
    the classifier are never trained, so those entities are never found)."""
    i_starts, b_starts = entity_starts(splits["train"])
    minority, kind = (i_starts, "I-") if scheme == "IOB2" else (b_starts, "B-")
    if minority:
        log.warning("data.train: %d of %d entities begin with %s, the rest with %s: scoring as %s "
                    "(the majority)%s", minority, i_starts + b_starts, kind, "B-" if kind == "I-" else "I-",
                    scheme, "; f1_strict does not count those entities" if scheme == "IOB2" else "")
    in_train = {t for s in splits["train"] for t in s.tags}
    for name in ("valid", "test"):
        unseen = Counter(t for s in splits[name] for t in s.tags if t not in in_train)
        if unseen:
            log.warning("data.%s: %d tags never seen in data.train (%s): the model is never trained to "
                        "predict them", name, sum(unseen.values()),
                        ", ".join(f"{t} x{n}" for t, n in unseen.most_common(8)))


def ner_eval(ds: ArrayDataset, preds_NxL: np.ndarray, data) -> dict:
    """Entity-level seqeval scores of the word-level predictions (first piece of each word)."""
    pred_tags = decode_tags(ds.meta["windows"], preds_NxL, data.label_names)
    true_tags = [list(s.tags) for s in ds.meta["sentences"]]
    scores = ner_scores(true_tags, pred_tags, scheme=data.scheme)
    return {**scores, "scheme": data.scheme, "report": ner_report(true_tags, pred_tags, scheme=data.scheme)}
