"""Metrics agree with seqeval itself (default and strict modes) and with closed forms."""
import math

import numpy as np
import pytest
from seqeval.metrics import classification_report, f1_score, precision_score, recall_score
from seqeval.scheme import IOB2

from scaling_jax.metrics import accuracy, mfu, ner_report, ner_scores, perplexity, \
    tokens_per_second

# Hand-made cases: a mix of hits, a wrong type, a wrong boundary and a missed entity.
TRUE = [["B-PER", "I-PER", "O", "B-LOC", "O"],
        ["O", "B-ORG", "I-ORG", "I-ORG", "O", "B-PER"],
        ["B-LOC", "O", "B-MISC"]]
PRED = [["B-PER", "I-PER", "O", "B-ORG", "O"],
        ["O", "B-ORG", "I-ORG", "O", "O", "B-PER"],
        ["B-LOC", "O", "O"]]


def test_ner_scores_match_seqeval_default_mode():
    s = ner_scores(TRUE, PRED, "IOB2")
    assert s["precision"] == pytest.approx(precision_score(TRUE, PRED), abs=1e-12)
    assert s["recall"] == pytest.approx(recall_score(TRUE, PRED), abs=1e-12)
    assert s["f1"] == pytest.approx(f1_score(TRUE, PRED), abs=1e-12)
    assert s["f1_macro"] == pytest.approx(f1_score(TRUE, PRED, average="macro", zero_division=0), abs=1e-12)
    ref = classification_report(TRUE, PRED, output_dict=True, zero_division=0)
    for t in ("PER", "LOC", "ORG", "MISC"):
        assert s[f"f1/{t}"] == pytest.approx(ref[t]["f1-score"], abs=1e-12)
        assert s[f"precision/{t}"] == pytest.approx(ref[t]["precision"], abs=1e-12)
        assert s[f"recall/{t}"] == pytest.approx(ref[t]["recall"], abs=1e-12)
        assert s[f"support/{t}"] == ref[t]["support"]
    # Closed form: 3 of 5 predicted entities are right, out of 6 gold ones.
    assert s["precision"] == pytest.approx(3 / 5) and s["recall"] == pytest.approx(3 / 6)
    assert s["f1"] == pytest.approx(2 * (3 / 5) * (3 / 6) / (3 / 5 + 3 / 6))
    assert s["f1_strict"] == pytest.approx(f1_score(TRUE, PRED, mode="strict", scheme=IOB2), abs=1e-12)


def test_lenient_and_strict_f1_differ_when_an_inside_tag_starts_an_entity():
    true = [["B-PER", "I-PER", "O", "B-LOC"]]
    pred = [["I-PER", "I-PER", "O", "B-LOC"]]      # conlleval reads I-PER I-PER as one PER
    s = ner_scores(true, pred, "IOB2")
    assert s["f1"] == pytest.approx(f1_score(true, pred)) == pytest.approx(1.0)
    assert s["f1_strict"] == pytest.approx(f1_score(true, pred, mode="strict", scheme=IOB2))
    assert s["f1_strict"] == pytest.approx(2 / 3)   # strict: only LOC counts; P = 1, R = 1/2
    assert "f1_strict" not in ner_scores(true, pred, "IOB1")


def test_report_text_is_seqeval_classification_report():
    assert ner_report(TRUE, PRED) == classification_report(TRUE, PRED, digits=4, zero_division=0)
    assert ner_report(TRUE, PRED, strict=True) == classification_report(
        TRUE, PRED, digits=4, mode="strict", scheme=IOB2, zero_division=0)
    with pytest.raises(ValueError, match="IOB2"):
        ner_report(TRUE, PRED, scheme="IOB1", strict=True)


def test_no_entities_gives_zero_scores_without_nan():
    s = ner_scores([["O", "O"]], [["O", "O"]])
    assert s == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "f1_macro": 0.0, "f1_strict": 0.0}


def test_ner_scores_rejects_mismatched_lengths_and_schemes():
    with pytest.raises(ValueError, match="shape"):
        ner_scores([["O"]], [["O", "O"]])
    with pytest.raises(ValueError, match="scheme"):
        ner_scores([["O"]], [["O"]], "BIOES")


def test_accuracy_skips_ignored_labels():
    logits = np.zeros((1, 4, 3), np.float32)
    logits[0, [0, 1, 2, 3], [2, 1, 0, 0]] = 1.0      # argmax 2, 1, 0, 0
    labels = np.array([[2, 0, -100, 0]])
    assert float(accuracy(logits, labels)) == pytest.approx(2 / 3)
    assert float(accuracy(logits[:, 0], np.array([2]))) == 1.0
    assert float(accuracy(logits, np.full((1, 4), -100))) == 0.0


def test_perplexity_throughput_and_mfu_closed_forms():
    assert perplexity(math.log(50.0)) == pytest.approx(50.0)
    assert perplexity(1e6) == math.inf
    assert tokens_per_second(1000, 0.5) == 2000.0 and tokens_per_second(10, 0) == 0.0
    assert mfu(2e14, 1e15) == pytest.approx(0.2) and mfu(1.0, 0.0) == 0.0
