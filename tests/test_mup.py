"""muP (Yang et al. 2022): init by width, per-group Adam learning rates through optax, the forward
multipliers, export that transformers reproduces, and config errors naming the key."""
import dataclasses
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling_jax.config import OptimConfig, load_config
from scaling_jax.errors import ConfigError
from scaling_jax.models import GPT2Config, init_model, save_pretrained
from scaling_jax.models.parametrization import Parametrization, fold_into_standard
from scaling_jax.train.mup import HIDDEN, mup_labels
from scaling_jax.train.optim import decay_mask, make_optimizer
from scaling_jax.tree import flat_dict

REPO = Path(__file__).resolve().parents[1]
MUP = lambda base: Parametrization("mup", base)


def gpt(width, layers=2, head_dim=8, vocab=61):
    return GPT2Config(vocab_size=vocab, n_positions=16, n_embd=width, n_layer=layers, n_head=width // head_dim,
                      resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)


def test_at_the_base_width_mup_initialises_exactly_as_sp():
    sp = init_model(gpt(32), "causal_lm", seed=4)
    mup = init_model(gpt(32), "causal_lm", seed=4, parametrization=MUP(32))
    for (path, a), b in zip(flat_dict(sp.params).items(), flat_dict(mup.params).values()):
        np.testing.assert_array_equal(a, b, err_msg=path)


def test_hidden_matrices_shrink_like_one_over_sqrt_width_and_the_rest_stay():
    model = init_model(gpt(128), "causal_lm", seed=0, parametrization=MUP(32))
    flat = flat_dict(model.params)
    labels = flat_dict(mup_labels(model.params))
    hidden = sorted(p for p, label in labels.items() if label == HIDDEN)
    assert hidden == sorted(f"h_{i}/{m}/kernel" for i in range(2) for m in
                            ("attn/query", "attn/key", "attn/value", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"))
    # 0.02 at the base width, / sqrt(128 / 32) = / 2 here; GPT-2's residual projections / sqrt(2 L) on top.
    assert np.std(flat["h_0/attn/query/kernel"]) == pytest.approx(0.01, rel=0.03)
    assert np.std(flat["h_1/mlp/c_proj/kernel"]) == pytest.approx(0.01 / 2, rel=0.03)
    assert np.std(flat["wte/embedding"]) == pytest.approx(0.02, rel=0.03)


def test_logits_carry_the_output_multiplier_and_attention_divides_by_head_dim():
    # With the same params, muP's logits are SP's x base/width once the attention scale is folded
    # into the query (q / sqrt(head_dim) turns muP's q k / head_dim into SP's q k / sqrt(head_dim)).
    sp = init_model(gpt(64), "causal_lm", seed=1)
    mup = init_model(gpt(64), "causal_lm", seed=1, parametrization=MUP(16))
    ids = np.arange(12, dtype=np.int32).reshape(2, 6) % 61
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(0), x.shape), sp.params)
    got = mup.apply(params, ids)
    q_folded = fold_into_standard(params, mup.module.parametrization, model_type="gpt2", width=64, head_dim=8,
                                  output_head=False)
    np.testing.assert_allclose(got, sp.apply(q_folded, ids) * 16 / 64, rtol=2e-5, atol=2e-6)


def _grads(params, seed=0):
    leaves, treedef = jax.tree.flatten(params)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    return jax.tree.unflatten(treedef, [jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])


@pytest.mark.parametrize("stack_layers", [False, True])
def test_hidden_matrices_get_adamw_at_the_scaled_rate_and_the_rest_at_the_base_rate(stack_layers):
    cfg = OptimConfig(lr=1e-2, weight_decay=0.1, schedule="constant", clip_norm=0.0)
    params = init_model(gpt(32), "causal_lm", seed=2, parametrization=MUP(8)).params
    tx, _ = make_optimizer(cfg, 10, hidden_lr_multiplier=0.25, stack_layers=stack_layers)
    state = tx.init(params)
    # The reference: plain optax.adamw over the whole tree at each rate; pick each leaf's group.
    refs = {}
    for name, lr in (("base", 1e-2), ("hidden", 2.5e-3)):
        ref = optax.adamw(lr, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay, mask=decay_mask)
        refs[name] = (ref, ref.init(params))
    labels = flat_dict(mup_labels(params))
    p = params
    for step in range(3):
        g = _grads(params, step)
        updates, state = tx.update(g, state, p)
        want = {}
        for name, (ref, ref_state) in refs.items():
            upd, ref_state = ref.update(g, ref_state, p)
            refs[name] = (ref, ref_state)
            want[name] = flat_dict(upd)
        for path, u in flat_dict(updates).items():
            expected = want["hidden" if labels[path] == HIDDEN else "base"][path]
            np.testing.assert_allclose(u, expected, rtol=1e-5, atol=1e-9, err_msg=path)
        p = optax.apply_updates(p, updates)


def test_exported_mup_model_gives_transformers_the_same_logits(tmp_path):
    import torch
    import transformers

    model = init_model(gpt(32, head_dim=8), "causal_lm", seed=3, parametrization=MUP(8))
    params = jax.tree.map(lambda x: x + 0.05 * jax.random.normal(jax.random.PRNGKey(1), x.shape), model.params)
    out = save_pretrained(model, params, tmp_path / "mup")
    hf, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids = np.array([[5, 9, 14, 3, 7, 1], [8, 2, 4, 11, 60, 0]], np.int32)
    with torch.no_grad():
        want = hf.eval()(torch.tensor(ids, dtype=torch.long)).logits.numpy()
    got = np.asarray(model.apply(params, ids))
    assert np.abs(got - want).max() <= 1e-4
    assert np.abs(got).max() > 0.05  # the multipliers matter: not a trivially small output


def test_config_errors_name_the_key():
    base = REPO / "configs/lm_tiny.yaml"
    with pytest.raises(ConfigError, match="model.base_width"):
        load_config(base, ["model.parametrization=mup"])
    with pytest.raises(ConfigError, match="model.parametrization"):
        load_config(base, ["model.parametrization=mup", "model.base_width=64", "model.family=bert"])
    with pytest.raises(ConfigError, match="model.parametrization: 'mu' is not one of sp, mup"):
        load_config(base, ["model.parametrization=mu"])
    with pytest.raises(ConfigError, match="sweep.lr_grid: a learning-rate sweep needs at least 2 values"):
        load_config(base, ["sweep.lr_grid=[1e-3]"])
    assert load_config(base, ["sweep.lr_grid=[1e-3, 2e-3]"]).sweep.lr_grid == (1e-3, 2e-3)
    cfg = load_config(base, ["model.parametrization=mup", "model.base_width=64"])
    assert dataclasses.replace(cfg.model).base_width == 64


def test_sp_models_are_unchanged_by_the_parametrization_field():
    # The default (SP) must not move HF parity: same params and logits as a model built without it.
    a = init_model(gpt(16), "causal_lm", seed=5)
    b = init_model(gpt(16), "causal_lm", seed=5, parametrization=Parametrization())
    ids = np.arange(10, dtype=np.int32).reshape(2, 5)
    np.testing.assert_array_equal(a.apply(a.params, ids), b.apply(b.params, ids))
    assert all(bool(jnp.all(x == y)) for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)))
