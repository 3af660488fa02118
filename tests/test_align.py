"""Word-piece alignment with a real WordPiece tokenizer: one label and one prediction per word,
gold tags survive the round trip (seqeval F1 = 1 on WNUT-17 dev), windows keep every word once."""
import numpy as np
import pytest
from seqeval.metrics import f1_score

from scaling_jax.data.align import IGNORE_INDEX, align_sentences, collate, decode_tags, \
    entities_from_tags, merge_windows, pieces_to_words
from scaling_jax.data.conll import Sentence, label_set, read_conll
from scaling_jax.metrics import ner_scores

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WHOLE_WORDS = ["the", "a", "new", "york", "dog", "is", "in", "lol"]


def make_tokenizer(tmp_dir, chars):
    """A real BERT WordPiece tokenizer whose vocab is single characters (+ `##` continuations) and
    a few whole words, so nearly every word splits into several pieces."""
    from transformers import BertTokenizerFast

    chars = sorted(set(chars))
    vocab = SPECIALS + WHOLE_WORDS + chars + ["##" + c for c in chars] + ["##ing"]
    (tmp_dir / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n", encoding="utf-8")
    # transformers 5 ignores `vocab_file=` in the constructor; from_pretrained reads vocab.txt.
    return BertTokenizerFast.from_pretrained(str(tmp_dir))


@pytest.fixture(scope="module")
def dev(shared_data):
    return read_conll(shared_data / "wnut17" / "emerging.dev.conll")


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory, dev):
    chars = {c for s in dev for w in s.tokens for c in w.lower()} | set("abcdefghijklmnopqrstuvwxyz")
    return make_tokenizer(tmp_path_factory.mktemp("vocab"), chars)


LABELS = ["O", "B-LOC", "I-LOC", "B-PER", "I-PER"]
L2I = {t: i for i, t in enumerate(LABELS)}


def test_multi_piece_word_gets_one_label_and_one_prediction(tokenizer):
    s = Sentence(("the", "Running", "dog"), ("O", "B-PER", "O"))
    (w,) = align_sentences([s], tokenizer, L2I).windows
    pieces = tokenizer.convert_ids_to_tokens(w.input_ids.tolist())
    assert pieces == ["[CLS]", "the", "r", "##u", "##n", "##n", "##ing", "dog", "[SEP]"]
    assert w.word_ids == (None, 0, 1, 1, 1, 1, 1, 2, None)
    assert w.labels.tolist() == [-100, 0, 3, -100, -100, -100, -100, 0, -100]
    pred_L = np.array([9, 0, 3, 4, 4, 1, 2, 0, 9, 7, 7])   # longer than the window: padding
    assert pieces_to_words(pred_L, w.word_ids).tolist() == [0, 3, 0]
    assert decode_tags([w], pred_L[None], LABELS) == [["O", "B-PER", "O"]]
    scores_LxC = np.arange(11 * 5).reshape(11, 5)
    assert pieces_to_words(scores_LxC, w.word_ids).tolist() == scores_LxC[[1, 2, 7]].tolist()


def test_gold_tags_round_trip_through_pieces_gives_f1_one_on_wnut17_dev(tokenizer, dev):
    labels = label_set(dev)
    l2i = {t: i for i, t in enumerate(labels)}
    for max_length in (128, 24):
        aligned = align_sentences(dev, tokenizer, l2i, max_length=max_length)
        batch = collate(aligned.windows)
        L = batch["labels"].shape[1]
        assert L % 8 == 0 and L <= max(max_length, 8) + 7
        # The tokenizer really splits: most words have several pieces.
        multi = sum(np.sum(w.labels == IGNORE_INDEX) - 2 for w in aligned.windows)
        assert multi > sum(len(s.tokens) for s in dev)
        # Predict the gold label on first pieces and noise elsewhere: the noise must not matter.
        noise = np.random.default_rng(0).integers(0, len(labels), batch["labels"].shape)
        pred = np.where(batch["labels"] >= 0, batch["labels"], noise)
        tags = decode_tags(aligned.windows, pred, labels)
        gold = [list(s.tags) for s in dev]
        assert tags == gold
        assert f1_score(gold, tags) == 1.0
        assert ner_scores(gold, tags)["f1"] == 1.0
    assert aligned.num_windowed > 0    # max_length=24 cut some dev sentences
    assert aligned.num_unk_words > 0   # WNUT-17 dev has words that WordPiece turns into nothing


def test_overlong_sentence_is_windowed_at_word_boundaries_keeping_every_word_once(tokenizer):
    words = tuple(["lol", "the", "Brooklyn", "a", "is"][i % 5] for i in range(101))
    tags = tuple("B-LOC" if w == "Brooklyn" else "O" for w in words)
    short = Sentence(("the", "dog"), ("O", "O"))
    aligned = align_sentences([short, Sentence(words, tags), short], tokenizer, L2I, max_length=16)
    assert aligned.num_sentences == 3 and aligned.num_windowed == 1
    long_windows = [w for w in aligned.windows if w.sentence == 1]
    assert len(long_windows) > 1
    seen = []
    for w in long_windows:
        assert len(w) <= 16
        assert w.word_ids[0] is None and w.word_ids[-1] is None        # [CLS] ... [SEP]
        ids = [i for i in w.word_ids if i is not None]
        assert set(ids) == set(range(w.word_start, w.word_end))
        seen += sorted(set(ids))
        assert int(np.sum(w.labels != IGNORE_INDEX)) == w.word_end - w.word_start
    assert seen == list(range(len(words)))                             # every word, once, in order
    # "Brooklyn" is 8 pieces: never cut across two windows.
    for w in long_windows:
        for i in set(w.word_ids) - {None}:
            assert w.word_ids.count(i) == (8 if words[i] == "Brooklyn" else 1)
    batch = collate(aligned.windows, length=16)
    tags_back = decode_tags(aligned.windows, np.maximum(batch["labels"], 0), LABELS)
    assert tags_back == [list(short.tags), list(tags), list(short.tags)]


def test_word_without_pieces_stands_as_unknown_and_too_long_word_is_truncated(tokenizer):
    s = Sentence(("the", "\u200b", "dog"), ("O", "B-LOC", "O"))
    aligned = align_sentences([s], tokenizer, L2I)
    (w,) = aligned.windows
    assert aligned.num_unk_words == 1
    assert tokenizer.convert_ids_to_tokens(w.input_ids.tolist())[2] == "[UNK]"
    assert w.labels.tolist() == [-100, 0, 1, 0, -100]
    long_word = Sentence(("the", "abcdefghijklmnop"), ("O", "B-PER"))
    aligned = align_sentences([long_word], tokenizer, L2I, max_length=8)
    assert aligned.num_truncated_words == 1
    assert [len(w) for w in aligned.windows] == [3, 8]
    assert decode_tags(aligned.windows, collate(aligned.windows)["labels"].clip(0), LABELS) == [["O", "B-PER"]]


def test_unlabelled_sentences_align_for_prediction(tokenizer):
    (w,) = align_sentences([Sentence(("the", "dog"))], tokenizer).windows
    assert (w.labels == IGNORE_INDEX).all()


def test_collate_pads_to_a_multiple_of_8_or_a_fixed_length(tokenizer):
    aligned = align_sentences([Sentence(("the",) * 9, ("O",) * 9), Sentence(("a",), ("O",))], tokenizer, L2I)
    b = collate(aligned.windows, pad_id=tokenizer.pad_token_id)
    assert {k: (v.shape, v.dtype) for k, v in b.items()} == {
        k: ((2, 16), np.int32) for k in ("input_ids", "attention_mask", "labels")}
    assert b["attention_mask"].sum(1).tolist() == [11, 3]
    assert (b["labels"][1, 3:] == IGNORE_INDEX).all() and (b["input_ids"][1, 3:] == 0).all()
    assert collate(aligned.windows, length=12)["input_ids"].shape == (2, 12)
    with pytest.raises(ValueError, match="length=10"):
        collate(aligned.windows, length=10)


def test_merge_windows_rejects_missing_words(tokenizer):
    aligned = align_sentences([Sentence(("the",) * 20, ("O",) * 20)], tokenizer, L2I, max_length=8)
    preds = [np.zeros(w.word_end - w.word_start, np.int32) for w in aligned.windows]
    assert [len(p) for p in merge_windows(aligned.windows, preds)] == [20]
    with pytest.raises(ValueError, match="skip or repeat"):
        merge_windows(aligned.windows[1:], preds[1:])


def test_entities_from_tags_gives_spans_scores_and_char_offsets():
    tokens = ["I", "love", "New", "York", "and", "Ann"]
    tags = ["O", "O", "B-LOC", "I-LOC", "O", "I-PER"]      # lenient: I-PER starts an entity
    assert entities_from_tags(tokens, tags) == [
        {"text": "New York", "type": "LOC", "start": 2, "end": 4, "score": None},
        {"text": "Ann", "type": "PER", "start": 5, "end": 6, "score": None}]
    text = "I love New  York and Ann"
    offsets = [(0, 1), (2, 6), (7, 10), (12, 16), (17, 20), (21, 24)]
    ents = entities_from_tags(tokens, tags, scores=[1, 1, 0.5, 0.7, 1, 0.9], char_offsets=offsets)
    assert [(e["text"], text[e["start"]:e["end"]]) for e in ents] == [("New  York",) * 2, ("Ann",) * 2]
    assert [e["score"] for e in ents] == [pytest.approx(0.6), pytest.approx(0.9)]
