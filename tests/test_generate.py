"""`scaling_jax.generate` (KV cache, prefill + decode in one jit) against transformers' `generate`
(use_cache, greedy) on tiny random GPT-2 / Llama / Mistral models, left-padded batches; EOS stops,
sampling rules, one compilation per shape."""
import jax
import numpy as np
import pytest

import torch
import transformers

import scaling_jax as sj
from scaling_jax.errors import ConfigError
from scaling_jax.models import load_pretrained
from scaling_jax.models import generate as gen
from scaling_jax.models.generate import left_pad

VOCAB = 97
PROMPTS = [[5, 17, 33, 8, 41, 12, 9], [22, 3, 61], [70, 4, 4, 19, 88]]


def perturb(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.3)  # peaked logits: no near-ties in argmax
    return model.eval()


def make(kind, tmp_path):
    torch.manual_seed(0)
    if kind == "gpt2":
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=64, n_embd=32, n_layer=2, n_head=4,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
        model = transformers.GPT2LMHeadModel(cfg)
    else:
        cls = {"llama": "Llama", "mistral": "Mistral"}[kind]
        extra = {"sliding_window": 4} if kind == "mistral" else {"tie_word_embeddings": True}
        cfg = getattr(transformers, f"{cls}Config")(
            vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=0,
            **extra)
        model = getattr(transformers, f"{cls}ForCausalLM")(cfg)
    perturb(model).save_pretrained(tmp_path / kind)
    return model, load_pretrained(tmp_path / kind, task="causal_lm")


def hf_greedy(model, ids, mask, n):
    with torch.no_grad():
        out = model.generate(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long),
                             max_new_tokens=n, min_new_tokens=n, do_sample=False, use_cache=True, pad_token_id=0,
                             eos_token_id=None)
    return out[:, ids.shape[1]:].numpy()


@pytest.mark.parametrize("kind", ["gpt2", "llama", "mistral"])
def test_greedy_left_padded_batch_equals_transformers_generate(kind, tmp_path):
    hf_model, ours = make(kind, tmp_path)
    ids, mask = left_pad(PROMPTS)
    n = 12  # prompt 7 + 12 > Mistral's window 4: the cache must apply it
    got = np.asarray(sj.generate(ours, ours.params, ids, mask, max_new_tokens=n))
    np.testing.assert_array_equal(got, hf_greedy(hf_model, ids, mask, n))


def test_cache_decode_equals_full_recompute_and_stops_at_eos(tmp_path):
    _, ours = make("llama", tmp_path)
    ids, mask = left_pad(PROMPTS)
    greedy = np.asarray(gen.generate(ours, ours.params, ids, mask, max_new_tokens=6))
    fwd = jax.jit(ours.apply)
    for b, row in enumerate(PROMPTS):  # unpadded, no cache, argmax of the full recompute each step
        seq = list(row)
        for _ in range(6):
            seq.append(int(np.argmax(np.asarray(fwd(ours.params, np.asarray([seq], np.int32)))[0, -1])))
        assert seq[len(row):] == list(greedy[b])
    eos = int(greedy[0, 2])  # row 0 stops after its third token; the rows after it go on as before
    stopped = np.asarray(gen.generate(ours, ours.params, ids, mask, max_new_tokens=6, eos_token_id=eos,
                                      pad_token_id=0))
    assert list(stopped[0]) == list(greedy[0, :3]) + [0, 0, 0]
    for b in (1, 2):
        row = list(greedy[b])
        cut = row.index(eos) + 1 if eos in row else 6
        assert list(stopped[b]) == row[:cut] + [0] * (6 - cut)


def test_one_compilation_per_shape_and_sampling_rules(tmp_path):
    _, ours = make("llama", tmp_path)
    ids, mask = left_pad(PROMPTS)
    greedy = np.asarray(gen.generate(ours, ours.params, ids, mask, max_new_tokens=5))
    before = gen._generate._cache_size()
    other = ids.copy()
    other[mask == 1] = (other[mask == 1] + 7) % VOCAB
    for t, k, p in ((0.7, 5, 0.9), (1.3, 0, 0.5), (1.0, 1, 1.0)):  # traced numbers: no recompile
        out = np.asarray(gen.generate(ours, ours.params, other, mask, max_new_tokens=5, sample=True,
                                      temperature=t, top_k=k, top_p=p, rng=jax.random.PRNGKey(3)))
        assert out.shape == (3, 5)
    assert gen._generate._cache_size() == before + 1  # the `sample` variant is one more program, once
    top1 = gen.generate(ours, ours.params, ids, mask, max_new_tokens=5, sample=True, top_k=1,
                        rng=jax.random.PRNGKey(9))
    np.testing.assert_array_equal(np.asarray(top1), greedy)  # top-k 1 is greedy whatever the draw
    a, b = (np.asarray(gen.generate(ours, ours.params, ids, mask, max_new_tokens=5, sample=True,
                                    rng=jax.random.PRNGKey(s))) for s in (1, 1))
    np.testing.assert_array_equal(a, b)  # pure: same key, same tokens


def test_bad_generate_inputs_are_clear_errors(tmp_path):
    _, ours = make("gpt2", tmp_path)
    ids, mask = left_pad(PROMPTS)
    with pytest.raises(ConfigError, match="LEFT-padded"):
        sj.generate(ours, ours.params, ids[:, ::-1], mask[:, ::-1], max_new_tokens=2)
    with pytest.raises(ConfigError, match="exceed GPT-2's n_positions 64"):
        sj.generate(ours, ours.params, ids, mask, max_new_tokens=60)
