"""Our Flax Llama / Qwen2 / Mistral against transformers' PyTorch models built from tiny random configs,
their config.json schemas (transformers 5 and 4.x), export round trips and clear errors.

Weights go transformers -> `save_pretrained` (torch) -> our `load_pretrained`; logits must agree to
1e-4 in float32 at every real (non-padded) position. Never relax the tolerance to pass.
"""
import importlib
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch
import transformers

from scaling_jax.errors import ConfigError
from scaling_jax.models import LlamaConfig, init_model, load_pretrained, save_pretrained
from scaling_jax.models.rope import inv_frequencies

TOL = 1e-4
VOCAB, PAD = 97, 0
ERRORS: dict[str, float] = {}

BASE = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=40, num_hidden_layers=2, num_attention_heads=4,
            max_position_embeddings=64, rms_norm_eps=1e-5, pad_token_id=PAD, bos_token_id=1, eos_token_id=2)
# name -> (HF class prefix, config overrides)
CONFIGS = {
    "llama-gqa-tied": ("Llama", dict(num_key_value_heads=2, tie_word_embeddings=True)),
    "llama-mha-untied-head_dim-bias-linear": ("Llama", dict(
        num_key_value_heads=4, head_dim=12, tie_word_embeddings=False, attention_bias=True, mlp_bias=True,
        rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 500.0})),
    "llama-llama3-mqa": ("Llama", dict(
        num_key_value_heads=1, tie_word_embeddings=False, rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 16, "rope_theta": 50000.0})),
    "llama-yarn": ("Llama", dict(
        num_key_value_heads=2, tie_word_embeddings=True,
        rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 16,
                         "rope_theta": 10000.0})),
    "qwen2-gqa": ("Qwen2", dict(num_key_value_heads=2, tie_word_embeddings=False,
                                rope_parameters={"rope_type": "default", "rope_theta": 1e6})),
    "mistral-window4": ("Mistral", dict(num_key_value_heads=2, sliding_window=4, tie_word_embeddings=False)),
}


def perturb(model, seed):
    """Noise on every parameter (norm scales, biases), so a swapped or missing mapping cannot hide."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def make_hf(prefix, overrides, out_dir, task="causal_lm", seed=0, num_labels=3, **extra):
    torch.manual_seed(seed)
    cfg = getattr(transformers, f"{prefix}Config")(**{**BASE, **overrides, **extra}, num_labels=num_labels)
    cls = {"causal_lm": "ForCausalLM", "base": "Model", "sequence_classification": "ForSequenceClassification"}[task]
    model = perturb(getattr(transformers, f"{prefix}{cls}")(cfg), seed)
    model.save_pretrained(out_dir)
    return model, out_dir


def right_padded(seed=0, lengths=(11, 7, 3, 1), length=11):
    rng = np.random.default_rng(seed)
    ids = rng.integers(3, VOCAB, (len(lengths), length)).astype(np.int32)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids[mask == 0] = PAD
    return ids, mask


def torch_out(model, ids, mask=None):
    kw = {} if mask is None else {"attention_mask": torch.tensor(mask, dtype=torch.long)}
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), **kw)
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).numpy()


def max_err(ours, ref, mask=None):
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))
    if diff.ndim == 3 and mask is not None:
        diff = diff[np.asarray(mask, bool)]
    return float(diff.max())


@pytest.mark.parametrize("name", list(CONFIGS))
def test_causal_lm_logits_match_transformers(name, tmp_path):
    prefix, overrides = CONFIGS[name]
    hf_model, path = make_hf(prefix, overrides, tmp_path / name)
    ours = load_pretrained(path, task="causal_lm")
    assert ours.newly_initialized == [] and ours.unused == []
    assert ours.config.model_type == prefix.lower()
    ids, mask = right_padded()
    got = jax.jit(ours.apply)(ours.params, ids, mask)
    ref = torch_out(hf_model, ids, mask)
    assert got.shape == ref.shape and got.dtype == jnp.float32
    err = ERRORS[name] = max_err(got, ref, mask)
    assert err <= TOL, f"max |ours - transformers| = {err:.3g} > {TOL}"


@pytest.mark.parametrize("task", ["base", "sequence_classification"])
def test_other_tasks_match_transformers(task, tmp_path):
    hf_model, path = make_hf("Llama", CONFIGS["llama-gqa-tied"][1], tmp_path / task, task=task)
    ours = load_pretrained(path, task=task)
    assert ours.newly_initialized == [] and ours.unused == []
    ids, mask = right_padded(seed=2)
    got = jax.jit(ours.apply)(ours.params, ids, mask)
    ref = torch_out(hf_model, ids, mask)
    assert got.shape == ref.shape
    err = ERRORS[f"llama/{task}"] = max_err(got, ref, mask)
    assert err <= TOL


def test_long_prompt_with_scaled_rope_matches_transformers(tmp_path):
    """640 tokens (past original_max_position_embeddings of the llama3 scaling) in one row."""
    hf_model, path = make_hf("Llama", dict(CONFIGS["llama-llama3-mqa"][1], num_hidden_layers=1), tmp_path / "long",
                             max_position_embeddings=1024)
    ours = load_pretrained(path, task="causal_lm")
    ids = np.random.default_rng(3).integers(3, VOCAB, (1, 640)).astype(np.int32)
    got = jax.jit(ours.apply)(ours.params, ids)
    err = ERRORS["llama3/640-tokens"] = max_err(got, torch_out(hf_model, ids))
    assert err <= TOL


def test_mistral_window_shorter_than_prompt_is_applied(tmp_path):
    """The window changes logits beyond position w (so the parity above tests it), never before."""
    _, path = make_hf("Mistral", CONFIGS["mistral-window4"][1], tmp_path / "w")
    windowed = load_pretrained(path, task="causal_lm")
    full = windowed.module.clone(config=LlamaConfig(**{**vars(windowed.config), "sliding_window": None}))
    ids, _ = right_padded(lengths=(11,))
    a = np.asarray(jax.jit(windowed.apply)(windowed.params, ids))
    b = np.asarray(jax.jit(lambda p, x: full.apply({"params": p}, x))(windowed.params, ids))
    np.testing.assert_allclose(a[:, :4], b[:, :4], atol=1e-6)
    assert np.abs(a[:, 4:] - b[:, 4:]).max() > 1e-3


def test_rope_frequencies_match_transformers():
    for name, (prefix, overrides) in CONFIGS.items():
        cfg = getattr(transformers, f"{prefix}Config")(**{**BASE, **overrides})
        hf_rope = importlib.import_module(f"transformers.models.{prefix.lower()}.modeling_{prefix.lower()}")
        rot = getattr(hf_rope, f"{prefix}RotaryEmbedding")(cfg)
        ours = LlamaConfig.from_hf_dict(cfg.to_dict())
        inv, factor = inv_frequencies(ours.head_dim, ours.rope_theta, ours.rope_scaling)
        np.testing.assert_allclose(inv, rot.inv_freq.numpy(), rtol=1e-6, err_msg=name)
        assert factor == pytest.approx(rot.attention_scaling), name


# ------------------------------------------------------------------------------ config schemas, export

def v4_config_json(cfg_v5: dict) -> dict:
    """config.json as transformers 4.x writes it: top-level rope_theta and rope_scaling (null for
    plain RoPE, `type` spelled as in older files), no rope_parameters."""
    d = dict(cfg_v5)
    rope = dict(d.pop("rope_parameters") or {})
    d["rope_theta"] = rope.pop("rope_theta", 10000.0)
    kind = rope.pop("rope_type", "default")
    d["rope_scaling"] = None if kind == "default" else {"type": kind, **rope}
    d["transformers_version"] = "4.46.3"
    return d


@pytest.mark.parametrize("name", ["llama-mha-untied-head_dim-bias-linear", "llama-llama3-mqa", "qwen2-gqa"])
def test_config_as_transformers_4_writes_it_loads_with_equal_logits(name, tmp_path):
    prefix, overrides = CONFIGS[name]
    hf_model, path = make_hf(prefix, overrides, tmp_path / name)
    cfg_file = path / "config.json"
    cfg_file.write_text(json.dumps(v4_config_json(json.loads(cfg_file.read_text()))))
    ours = load_pretrained(path, task="causal_lm")
    assert ours.config.rope_theta == hf_model.config.rope_parameters["rope_theta"]
    ids, mask = right_padded(seed=4)
    err = max_err(jax.jit(ours.apply)(ours.params, ids, mask), torch_out(hf_model, ids, mask), mask)
    assert err <= TOL


def test_null_rope_scaling_reads_top_level_theta():
    cfg = LlamaConfig.from_hf_dict({"model_type": "llama", "hidden_size": 32, "num_attention_heads": 4,
                                    "rope_theta": 123456.0, "rope_scaling": None})
    assert cfg.rope_theta == 123456.0 and cfg.rope_scaling is None


@pytest.mark.parametrize("name", ["llama-llama3-mqa", "qwen2-gqa", "llama-gqa-tied"])
def test_export_round_trip_loads_in_transformers_with_equal_logits(name, tmp_path):
    prefix, overrides = CONFIGS[name]
    hf_model, path = make_hf(prefix, overrides, tmp_path / "src")
    ours = load_pretrained(path, task="causal_lm")
    out = save_pretrained(ours, ours.params, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    # transformers 4.x reads only the top-level keys: they must say the same as rope_parameters.
    assert written["rope_theta"] == written["rope_parameters"]["rope_theta"] == ours.config.rope_theta
    if ours.config.rope_scaling is None:
        assert written["rope_scaling"] is None
    else:
        assert written["rope_scaling"] == {k: v for k, v in written["rope_parameters"].items() if k != "rope_theta"}
    back, info = getattr(transformers, f"{prefix}ForCausalLM").from_pretrained(out, output_loading_info=True)
    assert all(not v for v in info.values()), info
    assert back.config.rope_parameters == hf_model.config.rope_parameters
    ids, mask = right_padded(seed=5)
    assert max_err(torch_out(back.eval(), ids, mask), torch_out(hf_model, ids, mask), mask) <= TOL
    again = load_pretrained(out, task="causal_lm")
    assert again.config == ours.config


def test_from_scratch_llama_exports_for_transformers(tmp_path):
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                      tie_word_embeddings=True)
    model = init_model(cfg, task="causal_lm")
    out = save_pretrained(model, model.params, tmp_path / "scratch")
    back, info = transformers.LlamaForCausalLM.from_pretrained(out, output_loading_info=True)
    assert all(not v for v in info.values()), info
    ids, mask = right_padded(seed=6)
    assert max_err(jax.jit(model.apply)(model.params, ids, mask), torch_out(back.eval(), ids, mask), mask) <= TOL


def test_unsupported_rope_type_and_model_type_are_clear_errors(tmp_path):
    _, path = make_hf("Llama", CONFIGS["llama-gqa-tied"][1], tmp_path / "m")
    good = json.loads((path / "config.json").read_text())
    before = sorted(p.name for p in path.iterdir())
    (path / "config.json").write_text(json.dumps({**good, "rope_parameters": {"rope_type": "longrope",
                                                                             "rope_theta": 1e4}}))
    with pytest.raises(ConfigError, match=r"'longrope' is not supported; supported: default, linear, llama3, yarn"):
        load_pretrained(path, task="causal_lm")
    (path / "config.json").write_text(json.dumps({**good, "model_type": "gemma"}))
    with pytest.raises(ConfigError, match=r"unknown model_type 'gemma'; supported: .*llama, qwen2, mistral"):
        load_pretrained(path, task="causal_lm")
    assert sorted(p.name for p in path.iterdir()) == before


def test_llama_params_carry_logical_axes(tmp_path):
    model = init_model(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=1,
                                   num_attention_heads=2, tie_word_embeddings=False), task="causal_lm")
    axes = model.logical_axes()
    assert tuple(axes["embed_tokens"]["embedding"]) == ("vocab", "embed")
    assert tuple(axes["layers_0"]["self_attn"]["k_proj"]["kernel"]) == ("embed", "heads")
    assert tuple(axes["layers_0"]["self_attn"]["o_proj"]["kernel"]) == ("heads", "embed")
    assert tuple(axes["layers_0"]["mlp"]["down_proj"]["kernel"]) == ("mlp", "embed")
    assert tuple(axes["lm_head"]["kernel"]) == ("embed", "vocab")
    assert tuple(axes["norm"]["scale"]) == ("norm",)
    c = model.config  # untied head counted once; d_attn = heads x head_dim
    n = 4 * 16 * 16 + 3 * 16 * 24 + 16 * VOCAB
    assert model.matmul_params() == n
    assert model.flops_per_token(8) == 6 * n + 12 * 1 * 8 * c.num_attention_heads * c.head_dim


def test_scan_layers_and_remat_give_the_same_logits(tmp_path):
    _, path = make_hf("Llama", CONFIGS["llama-gqa-tied"][1], tmp_path / "s")
    plain = load_pretrained(path, task="causal_lm")
    scanned = load_pretrained(path, task="causal_lm", scan_layers=True, remat=True)
    ids, mask = right_padded(seed=7)
    loss = lambda m: jax.jit(jax.value_and_grad(lambda p: m.apply(p, ids, mask).mean()))(m.params)
    (a, ga), (b, gb) = loss(plain), loss(scanned)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    for x, y in zip(jax.tree.leaves(ga), jax.tree.leaves(gb)):
        np.testing.assert_allclose(x, y, atol=1e-6)


def test_freeze_presets_and_lora_targets_cover_llama_layers():
    from scaling_jax.train.freeze import make_freeze_labels
    from scaling_jax.train.lora import DEFAULT_TARGETS, lora_targets
    model = init_model(LlamaConfig(vocab_size=VOCAB, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                                   num_attention_heads=2, tie_word_embeddings=True), task="causal_lm")
    labels, report = make_freeze_labels(model.params, presets=("bottom:1",))
    assert labels["embed_tokens"]["embedding"] == "frozen"
    assert labels["layers_0"]["mlp"]["up_proj"]["kernel"] == "frozen"
    assert labels["layers_1"]["mlp"]["up_proj"]["kernel"] == "train" and labels["norm"]["scale"] == "train"
    targets = lora_targets(model.params, DEFAULT_TARGETS)
    assert len(targets) == 2 * 7 and "layers_1/self_attn/o_proj/kernel" in targets


def test_llama_from_scratch_config():
    from scaling_jax.config import config_from_dict
    from scaling_jax.train.build import build_model
    cfg = config_from_dict({"model": {"family": "llama", "vocab_size": 50, "d_model": 32, "n_layers": 1,
                                      "n_heads": 4, "n_kv_heads": 2, "max_len": 16}, "data": {"seq_len": 16}})
    model = build_model(cfg)
    c = model.config
    assert (c.model_type, c.num_key_value_heads, c.head_dim, c.intermediate_size, c.tie_word_embeddings) == \
        ("llama", 2, 8, 85, True)
    assert model.params["layers_0"]["self_attn"]["k_proj"]["kernel"].shape == (32, 16)


def test_zz_report_measured_errors():
    for name, err in sorted(ERRORS.items()):
        print(f"{name:50s} {err:.3g}")
