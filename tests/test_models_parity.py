"""Our Flax BERT / GPT-2 against transformers' PyTorch models built from tiny random configs.

Weights go transformers -> `save_pretrained` (torch) -> our `load_pretrained`; logits must agree to
1e-4 in float32 at every real (non-padded) position. Never relax the tolerance to pass.
"""
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import torch
import transformers

from scaling_jax.models import load_pretrained
from scaling_jax.ops import activation

TOL = 1e-4

BERT_CONFIGS = {
    "h32-l2-gelu": dict(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, intermediate_size=37,
                        hidden_act="gelu", layer_norm_eps=1e-12, type_vocab_size=2),
    "h48-l3-gelu_new": dict(hidden_size=48, num_attention_heads=6, num_hidden_layers=3, intermediate_size=64,
                            hidden_act="gelu_new", layer_norm_eps=1e-5, type_vocab_size=3),
    "h24-l1-relu": dict(hidden_size=24, num_attention_heads=2, num_hidden_layers=1, intermediate_size=24,
                        hidden_act="relu", layer_norm_eps=1e-7, type_vocab_size=1),
}
GPT2_CONFIGS = {
    "d32-l2-gelu_new": dict(n_embd=32, n_head=4, n_layer=2, activation_function="gelu_new", layer_norm_epsilon=1e-5),
    "d48-l3-gelu-inner": dict(n_embd=48, n_head=3, n_layer=3, n_inner=50, activation_function="gelu",
                              layer_norm_epsilon=1e-6, scale_attn_by_inverse_layer_idx=True),
}
BERT_TASKS = {"base": "BertModel", "token_classification": "BertForTokenClassification",
              "sequence_classification": "BertForSequenceClassification", "masked_lm": "BertForMaskedLM"}
GPT2_TASKS = {"base": "GPT2Model", "causal_lm": "GPT2LMHeadModel",
              "sequence_classification": "GPT2ForSequenceClassification"}
VOCAB, PAD = 101, 0
ERRORS: dict[str, float] = {}  # measured max abs errors, printed at the end (pytest -s)


def _perturb(model, seed):
    """Every parameter (LayerNorm scales, biases, heads included) gets noise, so that a swapped or
    missing mapping cannot hide behind HF's ones/zeros init."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


def make_hf(family, cls_name, overrides, tmp_path, seed=0, num_labels=3):
    torch.manual_seed(seed)
    if family == "bert":
        cfg = transformers.BertConfig(vocab_size=VOCAB, max_position_embeddings=40, pad_token_id=PAD,
                                      num_labels=num_labels, **overrides)
    else:
        cfg = transformers.GPT2Config(vocab_size=VOCAB, n_positions=40, pad_token_id=PAD, bos_token_id=1,
                                      eos_token_id=1, num_labels=num_labels, **overrides)
    model = _perturb(getattr(transformers, cls_name)(cfg), seed)
    out = tmp_path / cls_name
    model.save_pretrained(out)
    return model, out


def right_padded_batch(seed=0, lengths=(11, 7, 3, 1), length=11, type_vocab=2):
    rng = np.random.default_rng(seed)
    ids = rng.integers(2, VOCAB, (len(lengths), length)).astype(np.int32)
    mask = (np.arange(length)[None] < np.asarray(lengths)[:, None]).astype(np.int32)
    ids[mask == 0] = PAD
    types = (rng.integers(0, type_vocab, ids.shape) * mask).astype(np.int32)
    return ids, mask, types


def torch_logits(model, ids, mask, types=None):
    kwargs = {"attention_mask": torch.tensor(mask, dtype=torch.long)} if mask is not None else {}
    if types is not None:
        kwargs["token_type_ids"] = torch.tensor(types, dtype=torch.long)
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), **kwargs)
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).numpy()


def max_err(ours, ref, mask):
    """Max |ours - ref| over real positions (per-token outputs) or over everything (per-sequence)."""
    diff = np.abs(np.asarray(ours, np.float64) - np.asarray(ref, np.float64))
    if diff.ndim == 3 and mask is not None:
        diff = diff[np.asarray(mask, bool)]
    return float(diff.max())


# The heads on every shape; the bare base model on the first shape (and on MiniLM in test_models_minilm).
BERT_CASES = [(shape, task) for shape in BERT_CONFIGS for task in BERT_TASKS
              if task != "base" or shape == next(iter(BERT_CONFIGS))]
GPT2_CASES = [(shape, task) for shape in GPT2_CONFIGS for task in GPT2_TASKS
              if task != "base" or shape == next(iter(GPT2_CONFIGS))]


@pytest.mark.parametrize("shape,task", BERT_CASES)
def test_bert_logits_match_transformers(shape, task, tmp_path):
    overrides = BERT_CONFIGS[shape]
    hf_model, path = make_hf("bert", BERT_TASKS[task], overrides, tmp_path)
    ours = load_pretrained(path, task=task)
    assert ours.newly_initialized == [] and ours.unused == []
    ids, mask, types = right_padded_batch(type_vocab=overrides["type_vocab_size"])
    got = jax.jit(ours.apply)(ours.params, ids, mask, types)
    ref = torch_logits(hf_model, ids, mask, types)
    assert got.shape == ref.shape and got.dtype == jnp.float32
    err = ERRORS[f"bert/{shape}/{task}"] = max_err(got, ref, mask)
    assert err <= TOL, f"max |ours - transformers| = {err:.3g} > {TOL}"


@pytest.mark.parametrize("shape,task", GPT2_CASES)
def test_gpt2_logits_match_transformers(shape, task, tmp_path):
    hf_model, path = make_hf("gpt2", GPT2_TASKS[task], GPT2_CONFIGS[shape], tmp_path)
    ours = load_pretrained(path, task=task)
    assert ours.newly_initialized == [] and ours.unused == []
    ids, mask, _ = right_padded_batch(seed=1)
    got = jax.jit(ours.apply)(ours.params, ids, mask)
    ref = torch_logits(hf_model, ids, mask)
    assert got.shape == ref.shape
    err = ERRORS[f"gpt2/{shape}/{task}"] = max_err(got, ref, mask)
    assert err <= TOL, f"max |ours - transformers| = {err:.3g} > {TOL}"


def test_no_attention_mask_matches_transformers_default(tmp_path):
    hf_bert, bert_path = make_hf("bert", "BertForMaskedLM", BERT_CONFIGS["h32-l2-gelu"], tmp_path)
    hf_gpt, gpt_path = make_hf("gpt2", "GPT2LMHeadModel", GPT2_CONFIGS["d32-l2-gelu_new"], tmp_path)
    ids, _, _ = right_padded_batch(lengths=(11, 11))
    for hf_model, path, task in ((hf_bert, bert_path, "masked_lm"), (hf_gpt, gpt_path, "causal_lm")):
        ours = load_pretrained(path, task=task)
        got = jax.jit(ours.apply)(ours.params, ids)
        err = ERRORS[f"{task}/no-mask"] = max_err(got, torch_logits(hf_model, ids, None), None)
        assert err <= TOL


@pytest.mark.parametrize("name", ["gelu", "gelu_new"])
def test_activation_value_and_gradient_match_torch(name):
    """Our activations (the erf GELU has a closed-form custom JVP) against torch's ACT2FN and autograd."""
    x = np.linspace(-8, 8, 4001, dtype=np.float32)
    y, vjp = jax.vjp(activation(name), jnp.asarray(x))
    (dx,) = vjp(jnp.ones_like(y))
    xt = torch.tensor(x, requires_grad=True)
    yt = transformers.activations.ACT2FN[name](xt)
    yt.sum().backward()
    # float32 roundoff: the tanh form's derivative sums terms up to ~70 at |x| = 8 (worst seen 3.8e-6);
    # a wrong derivative is off by 1e-2 or more.
    np.testing.assert_allclose(np.asarray(y), yt.detach().numpy(), rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.asarray(dx), xt.grad.numpy(), rtol=0, atol=1e-5)


def test_bfloat16_compute_stays_close_to_float32(tmp_path):
    cases = (("bert", "BertForTokenClassification", BERT_CONFIGS["h32-l2-gelu"], "token_classification"),
             ("gpt2", "GPT2LMHeadModel", GPT2_CONFIGS["d32-l2-gelu_new"], "causal_lm"))
    for family, cls_name, overrides, task in cases:
        _, path = make_hf(family, cls_name, overrides, tmp_path)
        f32 = load_pretrained(path, task=task)
        bf16 = load_pretrained(path, task=task, dtype=jnp.bfloat16)
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(bf16.params))
        ids, mask, _ = right_padded_batch()
        ref = np.asarray(jax.jit(f32.apply)(f32.params, ids, mask))
        got = np.asarray(jax.jit(bf16.apply)(bf16.params, ids, mask))
        assert np.isfinite(got).all()
        rel = max_err(got, ref, mask) / np.abs(ref[mask.astype(bool)]).max()
        ERRORS[f"{family}/bf16-relative"] = rel
        assert rel <= 5e-2, f"bfloat16 relative error {rel:.3g}"


def test_padding_never_changes_real_positions_and_empty_rows_are_finite(tmp_path):
    _, path = make_hf("bert", "BertForTokenClassification", BERT_CONFIGS["h32-l2-gelu"], tmp_path)
    ours = load_pretrained(path, task="token_classification")
    ids, mask, types = right_padded_batch(lengths=(5, 5))
    fwd = jax.jit(ours.apply)  # compiled: XLA:CPU runs a jitted forward faster than op by op
    alone = fwd(ours.params, ids[:, :5], mask[:, :5], types[:, :5])
    padded = fwd(ours.params, ids, mask, types)
    np.testing.assert_allclose(padded[:1, :5], alone[:1], atol=1e-5)
    mask[1] = 0  # a row with no real token: every query's keys are masked
    out, grads = jax.jit(jax.value_and_grad(lambda p: ours.apply(p, ids, mask, types).sum()))(ours.params)
    assert np.isfinite(float(out))
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))


def test_gpt2_is_causal(tmp_path):
    _, path = make_hf("gpt2", "GPT2LMHeadModel", GPT2_CONFIGS["d32-l2-gelu_new"], tmp_path)
    ours = load_pretrained(path, task="causal_lm")
    ids, _, _ = right_padded_batch(lengths=(11,))
    changed = ids.copy()
    changed[0, 6] = (changed[0, 6] + 1) % VOCAB
    fwd = jax.jit(ours.apply)
    a, b = fwd(ours.params, ids), fwd(ours.params, changed)
    np.testing.assert_array_equal(a[:, :6], b[:, :6])
    assert np.abs(a[:, 6:] - b[:, 6:]).max() > 0


@pytest.mark.parametrize("family,cls_name,overrides,task", [  # one layer: every dropout site costs compile time
    ("bert", "BertForSequenceClassification", BERT_CONFIGS["h24-l1-relu"], "sequence_classification"),
    ("gpt2", "GPT2ForSequenceClassification", dict(GPT2_CONFIGS["d32-l2-gelu_new"], n_layer=1),
     "sequence_classification"),
])
def test_dropout_is_seeded_and_remat_changes_nothing(family, cls_name, overrides, task, tmp_path):
    _, path = make_hf(family, cls_name, overrides, tmp_path)
    plain = load_pretrained(path, task=task)
    remat = load_pretrained(path, task=task, remat=True)
    ids, mask, _ = right_padded_batch()
    train_fwd = jax.jit(lambda p, rng: plain.apply(p, ids, mask, train=True, rng=rng))
    eval_out = jax.jit(plain.apply)(plain.params, ids, mask)
    drop1, drop1b, drop2 = (train_fwd(plain.params, jax.random.PRNGKey(k)) for k in (1, 1, 2))
    np.testing.assert_array_equal(drop1, drop1b)
    assert np.abs(drop1 - eval_out).max() > 0 and np.abs(drop1 - drop2).max() > 0
    # Same params, same dropout draws (the rng streams follow module paths, which remat keeps).
    remat_out = jax.jit(lambda p, rng: remat.apply(p, ids, mask, train=True, rng=rng))(remat.params,
                                                                                     jax.random.PRNGKey(1))
    np.testing.assert_allclose(remat_out, drop1, atol=1e-6)
    # Each block is rematerialised: the backward pass recomputes it (one remat primitive per layer).
    grad = lambda m: str(jax.make_jaxpr(jax.grad(lambda p: m.apply(
        p, ids, mask, train=True, rng=jax.random.PRNGKey(1)).sum()))(m.params))
    remat_calls = lambda jaxpr: len(re.findall(r"\b(?:remat\d*|checkpoint)\[", jaxpr))
    assert remat_calls(grad(remat)) == plain.config.num_hidden_layers
    assert remat_calls(grad(plain)) == 0


def test_zz_report_measured_errors():
    """Prints the max errors the parity tests measured (visible with `pytest -s`)."""
    for name, err in sorted(ERRORS.items()):
        print(f"{name:55s} {err:.3g}")
