"""data.bpe_vocab: a byte-level BPE (or plain bytes) trained on the run's own training files, saved beside the run."""
from pathlib import Path

import pytest

from scaling_jax.config import load_config
from scaling_jax.data.bpe import BYTES, train_bpe
from scaling_jax.data.tokenizer import load_tokenizer, tokenizer_dir
from scaling_jax.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]


def test_bytes_and_bpe_tokenizers_round_trip_and_compress(tmp_path, shared_data):
    files = [shared_data / "shakespeare/sonnets_gut.txt"]
    text = files[0].read_text()[:5000]
    byte_tok = load_tokenizer(train_bpe(files, BYTES, tmp_path / "bytes"))
    bpe_tok = load_tokenizer(train_bpe(files, 512, tmp_path / "bpe"))
    assert len(byte_tok) == BYTES and len(bpe_tok) == 512
    byte_ids = byte_tok(text, add_special_tokens=False)["input_ids"]
    bpe_ids = bpe_tok(text, add_special_tokens=False)["input_ids"]
    assert len(byte_ids) == len(text.encode())  # one token per byte
    assert len(bpe_ids) < 0.7 * len(byte_ids)
    assert byte_tok.decode(byte_ids) == text and bpe_tok.decode(bpe_ids) == text
    assert bpe_tok.eos_token == "<|endoftext|>" and bpe_tok.eos_token_id is not None


def test_run_trains_once_beside_the_run_and_refuses_a_foreign_tokenizer(tmp_path, shared_data):
    over = [f"run.dir={tmp_path / 'run'}", "data.bpe_vocab=300", "model.vocab_size=300", "data.tokenizer=",
            "data.train=[shakespeare/sonnets_gut.txt, shakespeare/hamlet_gut.txt]",
            "data.valid=[shakespeare/hamlet_gut.txt]"]
    cfg = load_config(REPO / "configs/lm_tiny.yaml", over)
    out = tokenizer_dir(cfg)
    assert out == tmp_path / "run" / "tokenizer" and (out / "tokenizer.json").is_file()
    stamp = (out / "tokenizer.json").stat().st_mtime_ns
    assert tokenizer_dir(cfg) == out and (out / "tokenizer.json").stat().st_mtime_ns == stamp  # kept
    # Trained on the training works only: hamlet is held out for validation.
    assert '"files": 1' in (out / "bpe_source.json").read_text()
    other = load_config(REPO / "configs/lm_tiny.yaml", [*over[:1], "data.bpe_vocab=310", "model.vocab_size=310",
                                                        "data.tokenizer="])
    with pytest.raises(ConfigError, match="data.tokenizer: .* holds a tokenizer not trained"):
        tokenizer_dir(other)
    # A directory that is something else (the shared GPT-2 files) is never trained into.
    shared = load_config(REPO / "configs/lm_tiny.yaml", over[1:3])
    with pytest.raises(ConfigError, match="exists and holds no tokenizer.json"):
        tokenizer_dir(shared)


def test_vocab_size_must_match_and_bytes_are_the_minimum(tmp_path):
    with pytest.raises(ConfigError, match="model.vocab_size: 50257 must equal data.bpe_vocab=1024"):
        load_config(REPO / "configs/lm_tiny.yaml", ["data.bpe_vocab=1024"])
    with pytest.raises(ConfigError, match="data.bpe_vocab: a byte-level BPE needs at least 257"):
        train_bpe([Path(__file__)], 100, tmp_path / "x")
