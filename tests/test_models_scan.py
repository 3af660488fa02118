"""Layers under lax.scan, remat policies and bf16 compute: same numbers as the plain forms.

The scanned model keeps the per-layer param tree, so the reference is the unrolled model applied
to the very same params. (The bf16 kernels themselves: tests/test_ops.py.)
"""
import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from scaling_jax.config import ConfigError, load_config
from scaling_jax.models import BertConfig, GPT2Config, init_model
from scaling_jax.models.layers import remat_policy

BERT = BertConfig(vocab_size=97, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=48,
                  max_position_embeddings=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
GPT2 = GPT2Config(vocab_size=97, n_positions=32, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                  attn_pdrop=0.0)


def _normal(key, shape):
    """jax.random.normal drawn flat: XLA:CPU takes 7-11 s to compile a 4-D draw, 0.3 s a flat one."""
    return jax.random.normal(key, (int(np.prod(shape)),)).reshape(shape)


def _loss_and_grads(model, ids, mask):
    def loss(p):
        return jnp.mean(model.apply(p, ids, mask, None, train=True, rng=jax.random.PRNGKey(1)) ** 2)
    return jax.jit(jax.value_and_grad(loss))(model.params)


@pytest.mark.parametrize("config,task,remat", [(BERT, "token_classification", False),
                                               (BERT, "token_classification", "dots_saveable"),
                                               (GPT2, "causal_lm", True)])
def test_scanned_layers_match_unrolled(config, task, remat):
    kw = dict(task=task, num_labels=5 if task == "token_classification" else None, seed=3)
    unrolled = init_model(config, scan_layers=False, **kw)
    scanned = init_model(config, scan_layers=True, remat=remat, **kw)
    assert jax.tree.structure(unrolled.params) == jax.tree.structure(scanned.params)  # same per-layer tree
    prefix = "layer_" if task == "token_classification" else "h_"
    ids = jax.random.randint(jax.random.PRNGKey(0), (2, 16), 1, 97)
    mask = jnp.ones((2, 16), jnp.int32).at[1, 11:].set(0)
    l0, g0 = _loss_and_grads(unrolled, ids, mask)
    l1, g1 = _loss_and_grads(dataclasses.replace(scanned, params=unrolled.params), ids, mask)
    np.testing.assert_allclose(l1, l0, rtol=1e-6)
    for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(g0), jax.tree.leaves(g1)):
        np.testing.assert_allclose(b, a, atol=1e-6, rtol=1e-5, err_msg=jax.tree_util.keystr(path))
    # every layer got its own, non-zero gradient
    root = g1["encoder"] if task == "token_classification" else g1
    layer_norms = [float(jnp.linalg.norm(jax.flatten_util.ravel_pytree(root[f"{prefix}{i}"])[0])) for i in range(3)]
    assert all(n > 0 for n in layer_norms) and len(set(layer_norms)) == 3


def test_scanned_dropout_draws_differ_per_layer():
    cfg = BertConfig(**{**BERT.__dict__, "hidden_dropout_prob": 0.5, "attention_probs_dropout_prob": 0.0})
    model = init_model(cfg, task="base", seed=0, scan_layers=True)
    ids = jnp.ones((1, 8), jnp.int32)
    run = lambda seed: model.apply(model.params, ids, None, None, train=True, rng=jax.random.PRNGKey(seed))
    a, b = run(0), run(1)
    np.testing.assert_array_equal(a, run(0))  # deterministic in the key
    assert not np.allclose(a, b)


def test_bf16_model_tracks_float32_model():
    f32 = init_model(BERT, task="token_classification", num_labels=5, seed=0)
    bf16 = init_model(BERT, task="token_classification", num_labels=5, seed=0, dtype=jnp.bfloat16)
    ids = jax.random.randint(jax.random.PRNGKey(0), (2, 16), 1, 97)
    mask = jnp.ones((2, 16), jnp.int32)
    l32, g32 = _loss_and_grads(f32, ids, mask)
    l16, g16 = _loss_and_grads(dataclasses.replace(bf16, params=f32.params), ids, mask)
    assert abs(float(l16) - float(l32)) < 2e-2 * abs(float(l32))
    v32, v16 = (jax.flatten_util.ravel_pytree(g)[0] for g in (g32, g16))
    cos = float(jnp.dot(v32, v16) / (jnp.linalg.norm(v32) * jnp.linalg.norm(v16)))
    assert cos > 0.99


def test_remat_policy_names():
    assert remat_policy(False, scan=False) is None
    assert remat_policy(True, scan=False) == "nothing_saveable"
    assert remat_policy(False, scan=True) == "dots_with_no_batch_dims_saveable"
    with pytest.raises(ValueError, match="dots_saveable"):
        remat_policy("save_everything_please", scan=True)
    with pytest.raises(ConfigError, match="model.remat_policy"):
        load_config("configs/lm_tiny.yaml", ["model.remat_policy=bogus"])
