"""Functional LoRA: tiny trainable share at BERT-base size, merge == kernel + scaled a@b, and only
LoRA factors (and the head) move under the LoRA freeze labels."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling_jax.train.freeze import make_optimizer_with_freeze, param_paths
from scaling_jax.train.lora import init_lora, lora_labels, lora_targets, merge_lora


def _dense(d_in, d_out):
    return {"kernel": (d_in, d_out), "bias": (d_out,)}


def _ln(d):
    return {"scale": (d,), "bias": (d,)}


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def abstract(shapes):
    return jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), shapes, is_leaf=_is_shape)


def bert_shapes(hidden, layers, vocab, inter, positions=512, num_labels=13):
    """BERT token classification params by the notes/CONTRACTS.md paths, as shape tuples."""
    layer = {"attention": {"self": {n: _dense(hidden, hidden) for n in ("query", "key", "value")},
                           "output": {"dense": _dense(hidden, hidden), "LayerNorm": _ln(hidden)}},
             "intermediate": {"dense": _dense(hidden, inter)},
             "output": {"dense": _dense(inter, hidden), "LayerNorm": _ln(hidden)}}
    return {"embeddings": {"word_embeddings": {"embedding": (vocab, hidden)},
                           "position_embeddings": {"embedding": (positions, hidden)},
                           "token_type_embeddings": {"embedding": (2, hidden)}, "LayerNorm": _ln(hidden)},
            "encoder": {f"layer_{i}": layer for i in range(layers)},
            "classifier": _dense(hidden, num_labels)}


def gpt2_shapes(d=8, layers=2, vocab=40, positions=10):
    block = {"ln_1": _ln(d), "ln_2": _ln(d), "attn": {n: _dense(d, d) for n in ("query", "key", "value", "c_proj")},
             "mlp": {"c_fc": _dense(d, 4 * d), "c_proj": _dense(4 * d, d)}}
    return {"wte": {"embedding": (vocab, d)}, "wpe": {"embedding": (positions, d)},
            **{f"h_{i}": block for i in range(layers)}, "ln_f": _ln(d), "score": {"kernel": (d, 2)}}


def test_lora_plus_head_is_under_2_percent_of_bert_base_without_allocating():
    base = abstract(bert_shapes(hidden=768, layers=12, vocab=30522, inter=3072))
    r = 8
    lora = jax.eval_shape(lambda p: init_lora(p, rank=r, alpha=16.0, rng=jax.random.key(0)), base)
    assert lora["encoder"]["layer_0"]["attention"]["self"]["query"]["a"].shape == (768, r)
    assert lora["encoder"]["layer_11"]["output"]["dense"]["b"].shape == (r, 768)
    labels, report = lora_labels({"base": base, "lora": lora})
    per_layer = 4 * r * (768 + 768) + 2 * r * (768 + 3072)      # q, k, v, attn-out; MLP in, out
    head = 768 * 13 + 13
    assert report["trainable_params"] == 12 * per_layer + head
    assert report["total_params"] > 108_000_000
    assert report["trainable_params"] / report["total_params"] < 0.02


def test_default_targets_are_attention_and_mlp_kernels_of_bert_and_gpt2():
    bert = abstract(bert_shapes(hidden=8, layers=1, vocab=10, inter=16, positions=4, num_labels=3))
    assert lora_targets(bert) == sorted(f"encoder/layer_0/{m}/kernel" for m in (
        "attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense",
        "intermediate/dense", "output/dense"))
    gpt = abstract(gpt2_shapes(layers=1))
    assert lora_targets(gpt) == sorted(f"h_0/{m}/kernel" for m in (
        "attn/query", "attn/key", "attn/value", "attn/c_proj", "mlp/c_fc", "mlp/c_proj"))
    with pytest.raises(ValueError, match="match no kernel"):
        lora_targets(bert, r"decoder/kernel$")
    with pytest.raises(ValueError, match="2-D"):
        lora_targets({"x": {"kernel": jnp.zeros((2, 3, 4))}}, "x/kernel")


def _toy(seed=0):
    rng = np.random.default_rng(seed)
    f = lambda *s: jnp.asarray(rng.normal(size=s), jnp.float32)
    return {"hidden": {"dense": {"kernel": f(6, 5), "bias": f(5)}},
            "classifier": {"kernel": f(5, 3), "bias": f(3)}}, f(4, 6), f(4, 3)


def _apply(params, x_BxD):
    h = jnp.tanh(x_BxD @ params["hidden"]["dense"]["kernel"] + params["hidden"]["dense"]["bias"])
    return h @ params["classifier"]["kernel"] + params["classifier"]["bias"]


def test_merged_params_equal_kernel_plus_scaled_a_b_for_a_linear_layer():
    params, x, _ = _toy()
    rank, alpha = 2, 6.0
    lora = init_lora(params, "hidden/dense/kernel$", rank, alpha, jax.random.key(1))
    assert set(param_paths(lora)) == {"hidden/dense/a", "hidden/dense/b"}
    np.testing.assert_array_equal(merge_lora(params, lora, alpha, rank)["hidden"]["dense"]["kernel"],
                                  params["hidden"]["dense"]["kernel"])      # b = 0: starts as the base
    lora["hidden"]["dense"]["b"] = jnp.asarray(np.random.default_rng(2).normal(size=(rank, 5)), jnp.float32)
    merged = jax.jit(merge_lora, static_argnums=(2, 3))(params, lora, alpha, rank)
    a = np.asarray(lora["hidden"]["dense"]["a"], np.float64)
    b = np.asarray(lora["hidden"]["dense"]["b"], np.float64)
    w = np.asarray(params["hidden"]["dense"]["kernel"], np.float64)
    xs = np.asarray(x, np.float64)
    # A linear layer computed apart: x W + (alpha / r) (x a) b, in float64.
    expected = xs @ w + (alpha / rank) * (xs @ a) @ b + np.asarray(params["hidden"]["dense"]["bias"])
    got = x @ merged["hidden"]["dense"]["kernel"] + merged["hidden"]["dense"]["bias"]
    np.testing.assert_allclose(np.asarray(got), expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(merged["hidden"]["dense"]["kernel"]), w + (alpha / rank) * a @ b,
                               rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(merged["classifier"]["kernel"], params["classifier"]["kernel"])  # untargeted
    with pytest.raises(ValueError, match="no kernel"):
        merge_lora({"classifier": params["classifier"]}, lora, alpha, rank)


def test_only_lora_factors_and_the_head_move_under_lora_labels():
    params, x, y = _toy()
    rank, alpha = 2, 4.0
    tree = {"base": params, "lora": init_lora(params, "hidden/dense/kernel$", rank, alpha, jax.random.key(0))}
    labels, report = lora_labels(tree)
    assert report["trainable_params"] == 6 * 2 + 2 * 5 + 5 * 3 + 3

    def loss(t):
        return jnp.mean((_apply(merge_lora(t["base"], t["lora"], alpha, rank), x) - y) ** 2)

    # The gradient reaches the LoRA factors through the merge (b first: a @ b with b = 0).
    g = jax.grad(loss)(tree)
    assert float(jnp.abs(g["lora"]["hidden"]["dense"]["b"]).max()) > 0
    tx = make_optimizer_with_freeze(optax.adamw(1e-2, weight_decay=0.1), labels)
    state = tx.init(tree)
    start = tree
    for _ in range(3):
        grads = jax.grad(loss)(tree)
        updates, state = tx.update(grads, state, tree)
        tree = optax.apply_updates(tree, updates)
    before = dict(zip(param_paths(start), jax.tree.leaves(start)))
    after = dict(zip(param_paths(tree), jax.tree.leaves(tree)))
    moved = {p for p in before if not np.array_equal(np.asarray(before[p]), np.asarray(after[p]))}
    assert moved == {"lora/hidden/dense/a", "lora/hidden/dense/b",
                     "base/classifier/kernel", "base/classifier/bias"}
    assert float(loss(tree)) < float(loss(start))
    with pytest.raises(ValueError, match="'base'"):
        lora_labels(params)
