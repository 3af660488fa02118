"""Packing: examples of different lengths placed into fixed-length rows with segment ids (first-fit
decreasing), so no FLOP is spent on padding and every batch keeps one static shape.

A packed row holds examples one after another: `segment_ids` numbers them 1, 2, ... (0 = padding),
`positions` restart at 0 in each, `token_type_ids` are each example's own. Attention is confined
to a segment by the models (ops.masks.segment_mask), so each example sees exactly what it would
alone. Sequence-level tasks pool one position per segment: `segment_starts` / `segment_ends` (first
and last token of slot s, row-major) with `labels` per slot (-100 for an empty slot).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from scaling_jax.metrics import IGNORE_INDEX



def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Rows of example indices whose lengths sum to at most `capacity`: examples go longest first
    into the first row with room (Johnson 1973: at most 11/9 of the optimal row count + 6/9).
    Within a row, examples keep their placement order; ties in length keep index order."""
    lengths = np.asarray(lengths, np.int64)
    if len(lengths) and (lengths.min() < 1 or lengths.max() > capacity):
        bad = int(np.argmax((lengths < 1) | (lengths > capacity)))
        raise ValueError(f"example {bad} has length {int(lengths[bad])}, outside [1, {capacity}]")
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    free = np.zeros(len(lengths), np.int64)  # at most one row per example
    rows: list[list[int]] = []
    for i in order:
        n = lengths[i]
        fits = np.flatnonzero(free[:len(rows)] >= n)
        if len(fits):
            r = int(fits[0])
        else:
            r = len(rows)
            rows.append([])
            free[r] = capacity
        rows[r].append(int(i))
        free[r] -= n
    return rows


@dataclass(frozen=True)
class Packed:
    """Packed rows (`arrays`, each with a leading row axis) and, per row, the (example, offset,
    length) of its segments in order (`placement`), to map outputs back to examples."""

    arrays: dict[str, np.ndarray]
    placement: list[list[tuple[int, int, int]]]

    @property
    def efficiency(self) -> float:
        """Real tokens / token slots."""
        mask = self.arrays["attention_mask"]
        return float(mask.sum() / mask.size) if mask.size else 0.0


def pack(examples: Sequence[dict[str, np.ndarray]], seq_len: int, *, pad_id: int = 0,
         max_segments: int | None = None, rows: list[list[int]] | None = None) -> Packed:
    """Packs `examples` (dicts of 1-D int arrays `input_ids` and optionally `labels` (per token),
    `token_type_ids`; or a scalar `label` for sequence classification) into rows of `seq_len`.

    Token-level keys come back as rows x seq_len; with scalar `label`s, `labels`, `segment_starts`
    and `segment_ends` come back as rows x `max_segments` (default: the most any row holds).
    `rows` (lists of example indices) overrides first-fit decreasing.
    """
    lengths = [len(e["input_ids"]) for e in examples]
    rows = first_fit_decreasing(lengths, seq_len) if rows is None else rows
    R = len(rows)
    per_sequence = bool(examples) and "label" in examples[0]
    S = max_segments or max((len(r) for r in rows), default=1)
    out = {"input_ids": np.full((R, seq_len), pad_id, np.int32),
           "attention_mask": np.zeros((R, seq_len), np.int32),
           "segment_ids": np.zeros((R, seq_len), np.int32),
           "positions": np.zeros((R, seq_len), np.int32)}
    if examples and "token_type_ids" in examples[0]:
        out["token_type_ids"] = np.zeros((R, seq_len), np.int32)
    if per_sequence:
        out.update(labels=np.full((R, S), IGNORE_INDEX, np.int32), segment_starts=np.zeros((R, S), np.int32),
                   segment_ends=np.zeros((R, S), np.int32))
    elif examples and "labels" in examples[0]:
        out["labels"] = np.full((R, seq_len), IGNORE_INDEX, np.int32)
    placement: list[list[tuple[int, int, int]]] = []
    for r, members in enumerate(rows):
        if per_sequence and len(members) > S:
            raise ValueError(f"row {r} holds {len(members)} examples, more than max_segments={S}")
        offset, placed = 0, []
        for s, i in enumerate(members):
            e, n = examples[i], lengths[i]
            span = slice(offset, offset + n)
            out["input_ids"][r, span] = e["input_ids"]
            out["attention_mask"][r, span] = 1
            out["segment_ids"][r, span] = s + 1
            out["positions"][r, span] = np.arange(n)
            if "token_type_ids" in out:
                out["token_type_ids"][r, span] = e["token_type_ids"]
            if per_sequence:
                out["labels"][r, s] = e["label"]
                out["segment_starts"][r, s], out["segment_ends"][r, s] = offset, offset + n - 1
            elif "labels" in out:
                out["labels"][r, span] = e["labels"]
            placed.append((i, offset, n))
            offset += n
        if offset > seq_len:
            raise ValueError(f"row {r} holds {offset} tokens, more than seq_len={seq_len}")
        placement.append(placed)
    return Packed(out, placement)


def unpack_rows(values_RxL: np.ndarray, placement: list[list[tuple[int, int, int]]], n_examples: int) -> list:
    """Per-example slices of a packed per-token output (R x L x ...), in example order."""
    out: list = [None] * n_examples
    for r, placed in enumerate(placement):
        for i, offset, n in placed:
            out[i] = values_RxL[r, offset:offset + n]
    return out


def segments_from_eos(ids_BxL: np.ndarray, eos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Document segments of token windows cut from a stream of EOS-terminated documents: a new
    segment starts after every EOS (the EOS belongs to the document it ends). Returns
    (segment_ids BxL numbered from 1, positions BxL restarting at each segment)."""
    ids = np.asarray(ids_BxL)
    starts = np.zeros(ids.shape, bool)
    starts[:, 1:] = ids[:, :-1] == eos_id
    segment_ids = (np.cumsum(starts, axis=1) + 1).astype(np.int32)
    idx = np.broadcast_to(np.arange(ids.shape[1]), ids.shape)
    first = np.maximum.accumulate(np.where(starts | (idx == 0), idx, 0), axis=1)
    return segment_ids, (idx - first).astype(np.int32)


__all__ = ["IGNORE_INDEX", "Packed", "first_fit_decreasing", "pack", "segments_from_eos", "unpack_rows"]
