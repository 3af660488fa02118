"""`scaling-jax predict` on careless input: long NER texts are windowed, bad or empty input is one line."""
import io
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from scaling_jax.errors import DataError


def _stdin(monkeypatch, data: bytes):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(data), encoding="utf-8"))


def test_stdin_that_is_not_utf8_names_the_line_and_blank_input_is_an_error(monkeypatch):
    from scaling_jax.commands import predict
    _stdin(monkeypatch, b"fine\n\ncaf\xe9 latin-1\n")
    lines = predict._lines(None)
    assert next(lines) == "fine"
    with pytest.raises(DataError, match=r"<stdin>:3: not UTF-8 text"):  # before: a UnicodeDecodeError traceback
        next(lines)
    with pytest.raises(DataError, match="--text number 2 is empty"):
        list(predict._lines(["ok", "  "]))

    model = SimpleNamespace(task="token_classification")
    monkeypatch.setattr(predict, "load_for_predict", lambda d: (model, None, None, ["O"]))
    _stdin(monkeypatch, b"\n  \n")
    with pytest.raises(DataError, match="no input text"):  # before: no output, exit 0
        predict.predict_main(SimpleNamespace(model_dir="x", text=None))


def test_a_text_longer_than_the_model_is_tagged_in_windows_not_cut(tmp_path):
    import transformers
    from scaling_jax.commands.predict import predict_entities
    from scaling_jax.models import BertConfig, init_model, load_tokenizer
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world", "##s"]
    (tmp_path / "vocab.txt").write_text("\n".join(vocab))
    transformers.BertTokenizerFast(str(tmp_path / "vocab.txt")).save_pretrained(tmp_path)
    tokenizer = load_tokenizer(tmp_path)
    model = init_model(BertConfig(vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                  intermediate_size=20, max_position_embeddings=16), "token_classification",
                       id2label={0: "O", 1: "B-PER", 2: "I-PER"})
    params = dict(model.params)
    params["classifier"] = {**params["classifier"], "bias": np.array([0.0, 50.0, 0.0], np.float32)}  # always B-PER
    text = " ".join(["hello", "worlds"] * 20)  # 40 words, 60 pieces: four times what 16 positions hold
    entities = predict_entities(model, params, tokenizer, ["O", "B-PER", "I-PER"], text)
    assert len(entities) == 40  # before: only the words within 16 positions got tags, the rest silently "O"
    assert [e["text"] for e in entities[-2:]] == ["hello", "worlds"]
    assert entities[-1]["end"] == len(text)
