"""Task and speed metrics: seqeval entity F1, token accuracy, perplexity, tokens/s and MFU."""
from __future__ import annotations

import math
import warnings
from collections.abc import Sequence

import jax.numpy as jnp

SCHEMES = ("IOB1", "IOB2")
# The label of a position or sequence that no loss or metric counts (padding, special tokens,
# non-first word pieces, empty segment slots): torch's CrossEntropyLoss ignore_index.
IGNORE_INDEX = -100


def _seqeval_report(true_tags, pred_tags, **kw) -> dict:
    from seqeval.metrics import classification_report

    with warnings.catch_warnings():
        # All-O inputs make seqeval average an empty list (nan + RuntimeWarning); handled below.
        warnings.simplefilter("ignore", RuntimeWarning)
        return classification_report(true_tags, pred_tags, output_dict=True, zero_division=0, **kw)


def _as_lists(tags: Sequence[Sequence[str]]) -> list[list[str]]:
    return [list(t) for t in tags]


def ner_scores(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
               scheme: str = "IOB2") -> dict[str, float]:
    """Entity-level scores with seqeval, as fractions in [0, 1].

    `scheme` is the data's tagging scheme (see `data.conll.detect_scheme`). Keys:
    `precision`, `recall`, `f1`: micro averages in seqeval's default mode (lenient and
    conlleval-compatible: an `I-x` after `O` starts an entity); `f1_macro`: the unweighted mean over
    types; `precision/<type>`, `recall/<type>`, `f1/<type>`, `support/<type>` (gold entity count);
    and, only when `scheme == "IOB2"`, `f1_strict`: seqeval's `mode="strict", scheme=IOB2`
    (an entity counts only with an exact, well-formed B-/I- span). Types present in neither
    the gold nor the predicted tags do not appear; with no entities at all every score is 0.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    true_l, pred_l = _as_lists(true_tags), _as_lists(pred_tags)
    if len(true_l) != len(pred_l) or any(len(a) != len(b) for a, b in zip(true_l, pred_l)):
        raise ValueError("true_tags and pred_tags differ in shape (sentence count or lengths)")
    report = _seqeval_report(true_l, pred_l)
    types = [k for k in report if not k.endswith(" avg")]
    micro = report["micro avg"]
    out = {
        "precision": float(micro["precision"]),
        "recall": float(micro["recall"]),
        "f1": float(micro["f1-score"]),
        "f1_macro": float(report["macro avg"]["f1-score"]) if types else 0.0,
    }
    if scheme == "IOB2":
        strict = _seqeval_report(true_l, pred_l, mode="strict", scheme=_iob2())
        out["f1_strict"] = float(strict["micro avg"]["f1-score"])
    for t in types:
        out[f"precision/{t}"] = float(report[t]["precision"])
        out[f"recall/{t}"] = float(report[t]["recall"])
        out[f"f1/{t}"] = float(report[t]["f1-score"])
        out[f"support/{t}"] = float(report[t]["support"])
    return out


def ner_report(true_tags: Sequence[Sequence[str]], pred_tags: Sequence[Sequence[str]],
               scheme: str = "IOB2", strict: bool = False, digits: int = 4) -> str:
    """seqeval's `classification_report` text (default mode, or strict IOB2 with `strict=True`)."""
    from seqeval.metrics import classification_report

    if strict and scheme != "IOB2":
        raise ValueError(f"strict seqeval scoring needs IOB2 data, this data is {scheme}")
    kw = {"mode": "strict", "scheme": _iob2()} if strict else {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        return classification_report(_as_lists(true_tags), _as_lists(pred_tags), digits=digits,
                                     zero_division=0, **kw)


def _iob2():
    from seqeval.scheme import IOB2

    return IOB2


def accuracy(logits, labels, ignore_index: int = IGNORE_INDEX):
    """Fraction of positions where argmax(logits) == labels, skipping `labels == ignore_index`.

    logits_...xC with labels_... (e.g. BxLxC with BxL, or BxC with B). Jittable; 0 when nothing
    is counted. Returns a float32 scalar array.
    """
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    valid = labels != ignore_index
    hits = (jnp.argmax(logits, axis=-1) == labels) & valid
    return hits.sum() / jnp.maximum(valid.sum(), 1).astype(jnp.float32)


def perplexity(loss: float) -> float:
    """exp(mean token cross-entropy in nats); `inf` when that overflows a float."""
    try:
        return math.exp(float(loss))
    except OverflowError:
        return math.inf


def tokens_per_second(tokens: float, seconds: float) -> float:
    """Throughput; 0 when no time has passed."""
    return float(tokens) / seconds if seconds > 0 else 0.0


def mfu(flops_per_s: float, peak_flops_per_s: float) -> float:
    """Model FLOPs utilisation: achieved / peak FLOP/s, a fraction (0 when the peak is unknown)."""
    return float(flops_per_s) / peak_flops_per_s if peak_flops_per_s > 0 else 0.0

