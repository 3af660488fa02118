"""CoNLL reader on the real WNUT-17 files, its errors, and the datasets-backed loader."""
import json
import re

import pytest

from scaling_jax.data.conll import DataError, Sentence, detect_scheme, label_set, read_conll, tag_ids
from scaling_jax.data.hf_datasets import load_ner

WNUT_TYPES = ["corporation", "creative-work", "group", "location", "person", "product"]


@pytest.mark.parametrize("name,count", [("wnut17train.conll", 3394), ("emerging.dev.conll", 1009),
                                        ("emerging.test.annotated", 1287)])
def test_reads_real_wnut17_sentence_counts_types_and_scheme(shared_data, name, count):
    sentences = read_conll(shared_data / "wnut17" / name)
    assert len(sentences) == count
    labels = label_set(sentences)
    assert labels[0] == "O"
    assert labels[1:] == sorted([f"B-{t}" for t in WNUT_TYPES] + [f"I-{t}" for t in WNUT_TYPES])
    assert detect_scheme(sentences) == "IOB2"
    assert all(len(s.tokens) == len(s.tags) > 0 for s in sentences)


def test_first_wnut17_sentence_is_read_exactly(shared_data):
    first = read_conll(shared_data / "wnut17" / "wnut17train.conll")[0]
    assert first.tokens[:3] == ("@paulwalk", "It", "'s")
    assert first.tokens[14:17] == ("Empire", "State", "Building")
    assert first.tags[14:17] == ("B-location", "I-location", "I-location")
    assert len(first.tokens) == 27


def _write(tmp_path, text, name="bad.conll"):
    p = tmp_path / name
    p.write_text(text, encoding="utf-8")
    return p


def test_whitespace_only_lines_docstart_and_space_separated_columns(tmp_path):
    p = _write(tmp_path, "-DOCSTART- O\n\nJohn B-PER\nlives O\n \t \nin O\nParis B-LOC\n\n\n")
    assert read_conll(p) == [Sentence(("John", "lives"), ("B-PER", "O")),
                             Sentence(("in", "Paris"), ("O", "B-LOC"))]


def test_tab_separated_token_may_hold_a_space(tmp_path):
    p = _write(tmp_path, "New York\tB-LOC\n")
    assert read_conll(p)[0].tokens == ("New York",)


def test_three_fields_is_an_error_naming_file_and_line(tmp_path):
    p = _write(tmp_path, "John\tB-PER\n\nlives\tO\textra\n")
    with pytest.raises(DataError, match=re.escape(f"{p}:3") + ".*2 fields"):
        read_conll(p)


def test_unknown_tag_is_an_error_naming_file_and_line(tmp_path):
    p = _write(tmp_path, "John\tB-PER\nlives\tO\nin\tO\nParis\tB-PLACE\n")
    with pytest.raises(DataError, match=re.escape(f"{p}:4") + ".*B-PLACE"):
        read_conll(p, labels=["O", "B-PER", "I-PER", "B-LOC", "I-LOC"])
    bad = _write(tmp_path, "John\tB-PER\nlives\tX-FOO\n", "bio.conll")
    with pytest.raises(DataError, match=re.escape(f"{bad}:2") + ".*X-FOO"):
        read_conll(bad)


def test_empty_file_is_an_error_naming_file_and_line(tmp_path):
    p = _write(tmp_path, "")
    with pytest.raises(DataError, match=re.escape(f"{p}:1") + ".*no sentences"):
        read_conll(p)
    blank = _write(tmp_path, "\n\t\n-DOCSTART- O\n\n", "blank.conll")
    with pytest.raises(DataError, match=re.escape(f"{blank}:1")):
        read_conll(blank)


def test_detects_iob1_when_an_inside_tag_starts_an_entity():
    iob2 = [Sentence(("a", "b", "c"), ("B-PER", "I-PER", "O"))]
    assert detect_scheme(iob2) == "IOB2"
    assert detect_scheme([Sentence(("a", "b"), ("I-PER", "I-PER"))]) == "IOB1"
    assert detect_scheme([Sentence(("a", "b"), ("B-LOC", "I-PER"))]) == "IOB1"


def test_tag_ids_follow_the_label_list():
    s = [Sentence(("a", "b"), ("B-PER", "O"))]
    assert tag_ids(s, ["O", "B-PER"]) == [[1, 0]]
    with pytest.raises(DataError, match="sentence 0"):
        tag_ids(s, ["O"])


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def test_load_ner_from_local_json_with_label_names(tmp_path):
    train = _jsonl(tmp_path / "train.jsonl", [{"tokens": ["John", "lives"], "ner_tags": [1, 0]},
                                              {"tokens": [], "ner_tags": []},
                                              {"tokens": ["in", "Paris"], "ner_tags": [0, 3]}])
    dev = _jsonl(tmp_path / "dev.jsonl", [{"tokens": ["Ann"], "ner_tags": [1]}])
    splits = load_ner("json", data_files={"train": train, "validation": dev},
                      label_names=["O", "B-PER", "I-PER", "B-LOC"], cache_dir=tmp_path / "cache")
    assert splits["train"] == [Sentence(("John", "lives"), ("B-PER", "O")),
                               Sentence(("in", "Paris"), ("O", "B-LOC"))]
    assert splits["validation"] == [Sentence(("Ann",), ("B-PER",))]


def test_load_ner_reads_string_tags_and_classlabel_names(tmp_path):
    import datasets

    f = _jsonl(tmp_path / "x.jsonl", [{"words": ["Ann", "smiles"], "tags": ["B-PER", "O"]}])
    assert load_ner(f, tokens_column="words", tags_column="tags", cache_dir=tmp_path / "c") == {
        "train": [Sentence(("Ann", "smiles"), ("B-PER", "O"))]}
    features = datasets.Features({"tokens": datasets.List(datasets.Value("string")),
                                  "ner_tags": datasets.List(datasets.ClassLabel(names=["O", "B-PER"]))})
    ds = datasets.Dataset.from_dict({"tokens": [["Ann", "smiles"]], "ner_tags": [[1, 0]]}, features=features)
    parquet = tmp_path / "train.parquet"
    ds.to_parquet(str(parquet))
    assert load_ner(parquet, cache_dir=tmp_path / "c")["train"] == [Sentence(("Ann", "smiles"), ("B-PER", "O"))]


def test_load_ner_errors_name_the_row(tmp_path):
    f = _jsonl(tmp_path / "bad.jsonl", [{"tokens": ["a"], "ner_tags": ["O"]},
                                        {"tokens": ["a", "b"], "ner_tags": ["O", "Q-X"]}])
    with pytest.raises(DataError, match=r"\[train\] row 1.*Q-X"):
        load_ner(f, cache_dir=tmp_path / "c")
    ints = _jsonl(tmp_path / "ints.jsonl", [{"tokens": ["a"], "ner_tags": [0]}])
    with pytest.raises(DataError, match="label_names"):
        load_ner(ints, cache_dir=tmp_path / "c")


def test_load_ner_hub_name_offline_says_to_pass_local_files(tmp_path):
    with pytest.raises(DataError, match="data_files"):
        load_ner("no-such-user/no-such-ner-dataset", cache_dir=tmp_path / "c")


def test_a_stray_inside_tag_does_not_switch_iob2_data_to_iob1_and_is_reported(caplog):
    from scaling_jax.data.conll import entity_starts
    from scaling_jax.data.ner import _warn_about_tags
    iob2 = [Sentence(("a", "b", "c"), ("B-PER", "I-PER", "O"))] * 20 + [Sentence(("x", "y"), ("O", "I-LOC"))]
    assert entity_starts(iob2) == (1, 20)
    assert detect_scheme(iob2) == "IOB2"  # one stray I-LOC used to make it IOB1 (and drop f1_strict)
    test = [Sentence(("z", "w"), ("B-ORG", "I-ORG"))]
    with caplog.at_level("WARNING", logger="scaling_jax.data.ner"):
        _warn_about_tags({"train": iob2, "valid": [], "test": test}, "IOB2")
    assert "data.train: 1 of 21 entities begin with I-, the rest with B-: scoring as IOB2" in caplog.text
    assert "data.test: 2 tags never seen in data.train (B-ORG x1, I-ORG x1)" in caplog.text
