"""Word -> word-piece label alignment for token classification, windowing, and the way back.

A word's label goes on its first piece; later pieces and special tokens get -100 (ignored by the
loss). Predictions come back one per word, read from the first piece, so a word split into several
pieces is still predicted exactly once. Sentences longer than `max_length` pieces are cut into
windows at word boundaries; each word lies in exactly one window.
"""
from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from scaling_jax.data.conll import Sentence
from scaling_jax.errors import ConfigError, DataError
from scaling_jax.metrics import IGNORE_INDEX

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Window:
    """One model input: a run of whole words `[word_start, word_end)` of sentence `sentence`.

    `input_ids` and `labels` are int32 (n,) with the tokenizer's special tokens included;
    `word_ids[i]` is the sentence-level word index of piece i (None for special tokens). Kept on
    the host to turn piece predictions back into word predictions.
    """

    sentence: int
    word_start: int
    word_end: int
    input_ids: np.ndarray
    labels: np.ndarray
    word_ids: tuple[int | None, ...]

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass(frozen=True)
class Alignment:
    """The windows of a list of sentences, in sentence order, and what was done to fit them.

    num_windowed: sentences cut into more than one window.
    num_unk_words: words the tokenizer turned into no piece at all (e.g. a lone zero-width
      space); they were replaced by the unknown token so they are still labelled and predicted.
    num_truncated_words: words with more pieces than fit in a window; their pieces beyond the
      window were dropped (the first piece, which carries the label, is always kept).
    """

    windows: list[Window]
    num_sentences: int
    num_windowed: int
    num_unk_words: int
    num_truncated_words: int


def align_sentences(sentences: Sequence[Sentence], tokenizer,
                    label_to_id: Mapping[str, int] | None = None,
                    max_length: int = 128) -> Alignment:
    """Tokenize `sentences` (already split into words) with a Hugging Face fast tokenizer and
    align their tags to word pieces.

    label_to_id: tag -> class id; None (or sentences without tags) gives all-ignored labels, for
      prediction. max_length: the most pieces per window, special tokens included.
    """
    word_lists = [list(s.tokens) for s in sentences]
    for n, words in enumerate(word_lists):
        if not words:
            raise DataError(f"sentence {n}: no words")
    if not word_lists:
        return Alignment([], 0, 0, 0, 0)
    enc = tokenizer(word_lists, is_split_into_words=True, add_special_tokens=True,
                    truncation=False, verbose=False)
    windows: list[Window] = []
    num_windowed = num_unk = num_truncated = 0
    for n, sentence in enumerate(sentences):
        ids, wids = list(enc["input_ids"][n]), enc.word_ids(n)
        missing = set(range(len(word_lists[n]))) - {w for w in wids if w is not None}
        if missing:
            # A word with no piece would get neither a label nor a prediction: stand the unknown
            # token in for it (as BERT's basic tokenizer does for a word it cannot split).
            num_unk += len(missing)
            words = [tokenizer.unk_token if i in missing else w for i, w in enumerate(word_lists[n])]
            one = tokenizer([words], is_split_into_words=True, add_special_tokens=True,
                            truncation=False, verbose=False)
            ids, wids = list(one["input_ids"][0]), one.word_ids(0)
            if set(range(len(words))) - {w for w in wids if w is not None}:
                raise DataError(f"sentence {n}: the tokenizer gives no piece for some words "
                                f"even after replacing them with {tokenizer.unk_token!r}")
        label_ids = _label_ids(sentence, label_to_id, n)
        sent_windows, truncated = _windows(n, ids, wids, label_ids, max_length)
        num_truncated += truncated
        num_windowed += len(sent_windows) > 1
        windows.extend(sent_windows)
    if num_windowed or num_unk or num_truncated:
        log.info("aligned %d sentences: %d cut into windows of <= %d pieces, %d words without "
                 "pieces replaced by %s, %d words truncated", len(sentences), num_windowed,
                 max_length, num_unk, tokenizer.unk_token, num_truncated)
    return Alignment(windows, len(sentences), num_windowed, num_unk, num_truncated)


def _label_ids(sentence: Sentence, label_to_id: Mapping[str, int] | None, n: int) -> list[int]:
    if label_to_id is None or not sentence.tags:
        return [IGNORE_INDEX] * len(sentence.tokens)
    try:
        return [label_to_id[t] for t in sentence.tags]
    except KeyError as e:
        raise DataError(f"sentence {n}: tag {e.args[0]!r} not in the label set "
                        f"{sorted(label_to_id)}") from None


def _windows(n: int, ids: list[int], wids: Sequence[int | None], label_ids: list[int],
             max_length: int) -> tuple[list[Window], int]:
    """Cut one tokenized sentence into windows of whole words; returns (windows, truncated words)."""
    content = [i for i, w in enumerate(wids) if w is not None]
    first, last = content[0], content[-1]
    if len(content) != last - first + 1:
        raise DataError(f"sentence {n}: special tokens inside the sentence; pass one sequence")
    prefix, suffix = ids[:first], ids[last + 1:]
    budget = max_length - len(prefix) - len(suffix)
    if budget < 1:
        raise ConfigError(f"max_length={max_length} leaves no room beside "
                         f"{len(prefix) + len(suffix)} special tokens")
    # Group pieces by word, in order.
    words: list[tuple[int, list[int]]] = []
    for i in content:
        if words and words[-1][0] == wids[i]:
            words[-1][1].append(ids[i])
        else:
            words.append((wids[i], [ids[i]]))
    truncated = 0
    groups: list[list[tuple[int, list[int]]]] = [[]]
    used = 0
    for w, pieces in words:
        if len(pieces) > budget:
            pieces, truncated = pieces[:budget], truncated + 1
        if used + len(pieces) > budget and groups[-1]:
            groups.append([])
            used = 0
        groups[-1].append((w, pieces))
        used += len(pieces)
    out = []
    for group in groups:
        piece_ids = list(prefix)
        piece_wids: list[int | None] = [None] * len(prefix)
        labels = [IGNORE_INDEX] * len(prefix)
        for w, pieces in group:
            piece_ids += pieces
            piece_wids += [w] * len(pieces)
            labels += [label_ids[w]] + [IGNORE_INDEX] * (len(pieces) - 1)
        piece_ids += suffix
        piece_wids += [None] * len(suffix)
        labels += [IGNORE_INDEX] * len(suffix)
        out.append(Window(n, group[0][0], group[-1][0] + 1, np.asarray(piece_ids, np.int32),
                          np.asarray(labels, np.int32), tuple(piece_wids)))
    return out, truncated


def padded_length(lengths: Sequence[int], length: int | None = None, multiple_of: int = 8) -> int:
    """`length` if given (checked to fit), else the longest rounded up to a multiple of `multiple_of`."""
    longest = max(lengths, default=0)
    if length is not None:
        if longest > length:
            raise ValueError(f"a window has {longest} pieces, more than length={length}")
        return length
    return max(-(-longest // multiple_of) * multiple_of, multiple_of)


def collate(windows: Sequence[Window], length: int | None = None, multiple_of: int = 8,
            pad_id: int = 0) -> dict[str, np.ndarray]:
    """Stack windows into a batch padded to `length` (or the longest rounded up to `multiple_of`):
    int32 `input_ids` BxL (pad `pad_id`), `attention_mask` BxL (1 = real piece), `labels` BxL
    (pad -100)."""
    L = padded_length([len(w) for w in windows], length, multiple_of)
    B = len(windows)
    input_ids = np.full((B, L), pad_id, np.int32)
    mask = np.zeros((B, L), np.int32)
    labels = np.full((B, L), IGNORE_INDEX, np.int32)
    for b, w in enumerate(windows):
        input_ids[b, :len(w)] = w.input_ids
        mask[b, :len(w)] = 1
        labels[b, :len(w)] = w.labels
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


def first_piece_index(word_ids: Sequence[int | None]) -> np.ndarray:
    """Position of each word's first piece, ordered by word id; the word ids must be consecutive."""
    first: dict[int, int] = {}
    for i, w in enumerate(word_ids):
        if w is not None and w not in first:
            first[w] = i
    if not first:
        return np.zeros((0,), np.int64)
    ws = sorted(first)
    if ws[-1] - ws[0] + 1 != len(ws):
        raise ValueError(f"word ids are not consecutive: {ws}")
    return np.asarray([first[w] for w in ws], np.int64)


def pieces_to_words(pred_ids_L, word_ids: Sequence[int | None]) -> np.ndarray:
    """One prediction per word: the value at each word's first piece (piece predictions
    `pred_ids_L` may be longer than `word_ids`, e.g. padded; any trailing axes, such as class
    scores L x C, are kept)."""
    return np.asarray(pred_ids_L)[first_piece_index(word_ids)]


def merge_windows(windows: Sequence[Window], word_preds: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Join per-window word predictions (as from `pieces_to_words`) into one array per sentence,
    checking that the windows of each sentence cover its words exactly once, in order."""
    if len(windows) != len(word_preds):
        raise ValueError(f"{len(windows)} windows but {len(word_preds)} predictions")
    by_sentence: dict[int, list[tuple[Window, np.ndarray]]] = {}
    for w, p in zip(windows, word_preds):
        if len(p) != w.word_end - w.word_start:
            raise ValueError(f"sentence {w.sentence}: window of words [{w.word_start}, {w.word_end})"
                             f" got {len(p)} predictions")
        by_sentence.setdefault(w.sentence, []).append((w, p))
    out = []
    for s in sorted(by_sentence):
        parts = sorted(by_sentence[s], key=lambda wp: wp[0].word_start)
        end = 0
        for w, _ in parts:
            if w.word_start != end:
                raise ValueError(f"sentence {s}: windows skip or repeat words at word {end}")
            end = w.word_end
        out.append(np.concatenate([p for _, p in parts]))
    return out


def decode_tags(windows: Sequence[Window], pred_ids_NxL, id_to_label: Sequence[str]) -> list[list[str]]:
    """Piece-level class ids for each window (N x L, any padding) -> word tags per sentence."""
    pred = np.asarray(pred_ids_NxL)
    word_preds = [pieces_to_words(pred[i], w.word_ids) for i, w in enumerate(windows)]
    return [[id_to_label[int(i)] for i in s] for s in merge_windows(windows, word_preds)]


def entities_from_tags(tokens: Sequence[str], tags: Sequence[str], scores: Sequence[float] | None = None,
                       char_offsets: Sequence[tuple[int, int]] | None = None) -> list[dict]:
    """Entity spans from word tags, read as seqeval's default mode does (an `I-x` may start one).

    Returns a list of {text, type, start, end, score}: `start`/`end` are word indices [start, end)
    or, with `char_offsets` ((start, end) per word in the source text), character offsets; `text`
    joins the words with one space (with offsets: as many spaces as the source's gap); `score` is
    the mean of the per-word `scores` (e.g. the predicted tag's probability) or None.
    """
    from seqeval.metrics.sequence_labeling import get_entities

    if len(tokens) != len(tags):
        raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
    out = []
    for etype, first, last in get_entities(list(tags)):
        words = tokens[first:last + 1]
        if char_offsets is None:
            start, end, text = first, last + 1, " ".join(words)
        else:
            start, end = char_offsets[first][0], char_offsets[last][1]
            text = words[0]
            for i in range(first + 1, last + 1):
                gap = char_offsets[i][0] - char_offsets[i - 1][1]
                text += " " * gap + tokens[i]
        score = None if scores is None else float(np.mean([scores[i] for i in range(first, last + 1)]))
        out.append({"text": text, "type": etype, "start": start, "end": end, "score": score})
    return out
