"""LoRA export both ways on a tiny random Llama: merged into a plain HF directory (transformers loads it)
and as a PEFT adapter (`peft.PeftModel` loads it onto the transformers base); logits within 1e-4 of ours."""
import json

import jax
import numpy as np
import pytest

import torch
import transformers

from scaling_jax.errors import ConfigError
from scaling_jax.models import load_pretrained, save_pretrained
from scaling_jax.models.peft import save_peft_adapter
from scaling_jax.train.lora import DEFAULT_TARGETS, init_lora, merge_lora

peft = pytest.importorskip("peft")  # the `test` extra installs it

TOL = 1e-4
RANK, ALPHA = 4, 8.0


def tiny_llama(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=61, hidden_size=32, intermediate_size=40, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                   tie_word_embeddings=True, pad_token_id=0)
    model = transformers.LlamaForCausalLM(cfg).eval()
    model.save_pretrained(tmp_path / "base")
    return tmp_path / "base"


def trained_lora(ours):
    """LoRA factors with b != 0 (as after training), on all seven Llama projections."""
    lora = init_lora(ours.params, DEFAULT_TARGETS, RANK, ALPHA, jax.random.PRNGKey(1))
    return jax.tree_util.tree_map_with_path(
        lambda p, x: x + 0.2 * jax.random.normal(jax.random.PRNGKey(len(str(p))), x.shape), lora)


def logits_of(model, ids, mask):
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask)).logits.numpy()


def test_merged_and_peft_exports_match_our_logits(tmp_path):
    base_dir = tiny_llama(tmp_path)
    ours = load_pretrained(base_dir, task="causal_lm")
    lora = trained_lora(ours)
    merged = merge_lora(ours.params, lora, ALPHA, RANK)
    ids = np.array([[5, 9, 14, 3, 7, 22], [8, 2, 4, 11, 0, 0]], np.int32)
    mask = (ids != 0).astype(np.int32)
    mask[0] = 1
    want = np.asarray(jax.jit(ours.apply)(merged, ids, mask))
    base_logits = np.asarray(jax.jit(ours.apply)(ours.params, ids, mask))
    assert np.abs(want - base_logits).max() > 1e-2  # LoRA changes the model

    out = save_pretrained(ours, jax.device_get(merged), tmp_path / "merged")
    hf_merged = transformers.LlamaForCausalLM.from_pretrained(out).eval()
    err_merged = np.abs(logits_of(hf_merged, ids, mask) - want)[mask.astype(bool)].max()
    assert err_merged <= TOL

    adapter = save_peft_adapter(ours, lora, tmp_path / "adapter", rank=RANK, alpha=ALPHA, base_model=base_dir)
    cfg = json.loads((adapter / "adapter_config.json").read_text())
    assert cfg["target_modules"] == ["down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    base = transformers.LlamaForCausalLM.from_pretrained(base_dir).eval()
    with_adapter = peft.PeftModel.from_pretrained(base, str(adapter)).eval()
    err_peft = np.abs(logits_of(with_adapter, ids, mask) - want)[mask.astype(bool)].max()
    assert err_peft <= TOL, f"PEFT adapter logits differ by {err_peft:.3g}"
    print(f"merged export max err {err_merged:.3g}, PEFT adapter max err {err_peft:.3g}")


def test_peft_export_refuses_gpt2_fused_qkv(tmp_path):
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=61, n_embd=16, n_layer=1, n_head=2, n_positions=16)
    transformers.GPT2LMHeadModel(cfg).save_pretrained(tmp_path / "g")
    ours = load_pretrained(tmp_path / "g", task="causal_lm")
    lora = init_lora(ours.params, DEFAULT_TARGETS, 2, 4.0, jax.random.PRNGKey(0))
    with pytest.raises(ConfigError, match="not a torch Linear; export the merged model"):
        save_peft_adapter(ours, lora, tmp_path / "a", rank=2, alpha=4.0)
    assert not (tmp_path / "a").exists()
