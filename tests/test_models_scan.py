"""Layers under lax.scan, remat policies and the bf16 matmuls: same numbers as the plain forms.

The scanned model keeps the per-layer param tree, so the reference is the unrolled model applied
to the very same params; the bf16 matmuls' hand-written backwards (dense, batched, attention) are
checked against autodiff of the same products computed in float32.
"""
import dataclasses

import jax
import jax.flatten_util
import jax.numpy as jnp
import numpy as np
import pytest

from scaling_jax.config import ConfigError, load_config
from scaling_jax.models import BertConfig, GPT2Config, init_model
from scaling_jax.models.attention import (attend, batched_matmul, materialized_transpose, matmul_acc32, remat_policy,
                                          weight_grad)

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


def test_matmul_acc32_forward_and_grads_match_float32_reference():
    kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
    x = jax.random.normal(kx, (64, 48)).astype(jnp.bfloat16)
    w = jax.random.normal(kw, (48, 40)).astype(jnp.bfloat16)
    g = jax.random.normal(kg, (64, 40))
    y, vjp = jax.vjp(matmul_acc32, x, w)
    assert y.dtype == jnp.float32
    ref_y, ref_vjp = jax.vjp(lambda a, b: a @ b, x.astype(jnp.float32), w.astype(jnp.float32))
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-4)  # exact products, f32 sums
    dx, dw = vjp(g)
    rdx, rdw = ref_vjp(g)
    assert dx.dtype == jnp.bfloat16 and dw.dtype == jnp.bfloat16
    # both multiply a bf16-rounded cotangent and end rounded to bf16 (8 bits of mantissa)
    np.testing.assert_allclose(np.asarray(dx, np.float32), rdx, rtol=2e-2, atol=5e-2)
    np.testing.assert_allclose(np.asarray(dw, np.float32), rdw, rtol=2e-2, atol=5e-2)
    # against the float32 reference fed that rounded cotangent, only the final bf16 rounding is left
    sdx, sdw = ref_vjp(g.astype(jnp.bfloat16).astype(jnp.float32))
    np.testing.assert_allclose(np.asarray(dx, np.float32), sdx, rtol=2**-8, atol=1e-6)
    np.testing.assert_allclose(np.asarray(dw, np.float32), sdw, rtol=2**-8, atol=1e-6)


def test_weight_grad_under_jit_matches_and_propagates_nan():
    """The CPU path (transpose behind a conditional) is what jit compiles here; a NaN in the
    cotangent's probe element takes the other branch and must poison the gradient, not hide it."""
    kx, kg = jax.random.split(jax.random.PRNGKey(1), 2)
    x = jax.random.normal(kx, (96, 32)).astype(jnp.bfloat16)
    g = jax.random.normal(kg, (96, 24)).astype(jnp.bfloat16).astype(jnp.float32)
    dw = jax.jit(weight_grad)(x, g)
    ref = np.asarray(x, np.float32).T @ np.asarray(g)
    np.testing.assert_allclose(dw, ref, rtol=1e-5, atol=1e-5)
    assert np.isnan(np.asarray(jax.jit(weight_grad)(x, g.at[0, 0].set(jnp.nan)))).all()
    t = jax.jit(materialized_transpose, static_argnums=1)
    y = _normal(kx, (2, 5, 3, 4))
    np.testing.assert_array_equal(t(y, (0, 2, 1, 3), y[0, 0, 0, 0]), jnp.transpose(y, (0, 2, 1, 3)))
    assert np.isnan(np.asarray(t(y, (0, 2, 1, 3), jnp.float32(jnp.nan)))).all()


def batched_matmul_nt(a, b):
    return batched_matmul(a, b, True)


@pytest.mark.parametrize("fn,spec", [(batched_matmul_nt, "nhij,nhkj->nhik"), (batched_matmul, "nhij,nhjk->nhik")])
def test_batched_matmuls_match_float32_autodiff(fn, spec):
    ka, kb, kg = jax.random.split(jax.random.PRNGKey(2), 3)
    a = _normal(ka, (2, 3, 16, 8)).astype(jnp.bfloat16)
    b_shape = (2, 3, 12, 8) if fn is batched_matmul_nt else (2, 3, 8, 12)
    b = _normal(kb, b_shape).astype(jnp.bfloat16)
    g = _normal(kg, (2, 3, 16, 12)).astype(jnp.bfloat16).astype(jnp.float32)  # exact in bf16
    y, vjp = jax.vjp(jax.jit(fn), a, b)
    ref_y, ref_vjp = jax.vjp(lambda x, z: jnp.einsum(spec, x, z), a.astype(jnp.float32), b.astype(jnp.float32))
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(y, ref_y, rtol=1e-5, atol=1e-5)
    for got, want in zip(vjp(g), ref_vjp(g)):  # bf16 products summed in f32, then one bf16 rounding
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float32), want, rtol=2**-8, atol=1e-6)


@pytest.mark.parametrize("fn,shapes,spec", [(matmul_acc32, ((512, 256), (256, 256)), "ij,jk->ik"),
                                            (batched_matmul_nt, ((4, 128, 64), (4, 128, 64)), "nij,nkj->nik"),
                                            (batched_matmul, ((4, 128, 128), (4, 128, 64)), "nij,njk->nik")])
def test_bf16_matmuls_compile_with_constant_cotangents(fn, shapes, spec):
    """A constant cotangent lets XLA fold the materialising conditional's predicate; a bf16 dot
    that the fold leaves transposed must not reach XLA:CPU's f32-only dot thunk (measured: without
    the barrier on the probe, "Unsupported element type for DotThunk::Execute: BF16 x BF16 = F32")."""
    a, b = (jax.random.normal(jax.random.PRNGKey(i), s).astype(jnp.bfloat16) for i, s in enumerate(shapes))
    c = jax.random.normal(jax.random.PRNGKey(9), jnp.einsum(spec, a, b).shape)
    ref = jax.grad(lambda x, z: jnp.sum(jnp.einsum(spec, x, z) * c), argnums=(0, 1))(a.astype(jnp.float32),
                                                                                      b.astype(jnp.float32))
    loss = lambda x, z: jnp.sum(fn(x, z).astype(jnp.bfloat16).astype(jnp.float32) * c)
    got = jax.jit(jax.grad(loss, argnums=(0, 1)))(a, b)
    for g, r in zip(got, ref):  # bf16-rounded cotangents: a loose match, the crash is the point
        np.testing.assert_allclose(np.asarray(g, np.float32), r, rtol=5e-2, atol=5e-1)


def test_bf16_attention_with_dropout_tracks_float32():
    """The bf16 dropout path (heads-first, hand-written backward) against the float32 einsum
    path on the same bf16-exact inputs and the same dropout bits."""
    kq, kk, kv, kg = jax.random.split(jax.random.PRNGKey(4), 4)
    q, k, v = (jax.random.normal(kx, (2, 16, 32)).astype(jnp.bfloat16) for kx in (kq, kk, kv))
    g = jax.random.normal(kg, (2, 16, 32))
    mask = jnp.ones((2, 1, 1, 16), bool).at[1, :, :, 11:].set(False)

    def run(dtype):
        def f(q, k, v):
            out = attend(q, k, v, mask, num_heads=4, scale=0.35, dropout_rate=0.25, dropout_rng=jax.random.PRNGKey(7))
            return jnp.sum(out.astype(jnp.float32) * g)
        return jax.jit(jax.value_and_grad(f, argnums=(0, 1, 2)))(*(t.astype(dtype) for t in (q, k, v)))

    (l32, g32), (l16, g16) = run(jnp.float32), run(jnp.bfloat16)
    assert abs(float(l16) - float(l32)) < 1e-2 * abs(float(l32))
    for a, b in zip(g16, g32):
        np.testing.assert_allclose(np.asarray(a, np.float32), b, rtol=2e-2, atol=3e-2)  # measured ~1e-2 of 2


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
