"""Freeze masks: regex/preset labels, frozen leaves hold no Adam moments, stay bit-identical, and
trainable leaves follow plain adamw exactly (optax's own behaviour as the reference)."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from scaling_jax.train.freeze import make_freeze_labels, make_optimizer_with_freeze, opt_state_bytes, \
    param_paths, path_str, report_lines


def _dense(d_in, d_out):
    return {"kernel": (d_in, d_out), "bias": (d_out,)}


def _ln(d):
    return {"scale": (d,), "bias": (d,)}


def bert_shapes(hidden=16, layers=4, vocab=50, inter=32, positions=12, num_labels=5):
    """A BERT token-classification param tree (notes/CONTRACTS.md paths) as nested shape tuples."""
    layer = {"attention": {"self": {n: _dense(hidden, hidden) for n in ("query", "key", "value")},
                           "output": {"dense": _dense(hidden, hidden), "LayerNorm": _ln(hidden)}},
             "intermediate": {"dense": _dense(hidden, inter)},
             "output": {"dense": _dense(inter, hidden), "LayerNorm": _ln(hidden)}}
    return {"embeddings": {"word_embeddings": {"embedding": (vocab, hidden)},
                           "position_embeddings": {"embedding": (positions, hidden)},
                           "token_type_embeddings": {"embedding": (2, hidden)},
                           "LayerNorm": _ln(hidden)},
            "encoder": {f"layer_{i}": layer for i in range(layers)},
            "pooler": {"dense": _dense(hidden, hidden)},
            "classifier": _dense(hidden, num_labels)}


def gpt2_shapes(d=8, layers=3, vocab=40, positions=10):
    block = {"ln_1": _ln(d), "ln_2": _ln(d),
             "attn": {n: _dense(d, d) for n in ("query", "key", "value", "c_proj")},
             "mlp": {"c_fc": _dense(d, 4 * d), "c_proj": _dense(4 * d, d)}}
    return {"wte": {"embedding": (vocab, d)}, "wpe": {"embedding": (positions, d)},
            **{f"h_{i}": block for i in range(layers)}, "ln_f": _ln(d), "score": {"kernel": (d, 2)}}


def _is_shape(x):
    return isinstance(x, tuple) and all(isinstance(i, int) for i in x)


def materialize(shapes, seed=0):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: jnp.asarray(rng.normal(size=s), jnp.float32), shapes, is_leaf=_is_shape)


def frozen_paths(labels):
    return {p for p, lab in zip(param_paths(labels), jax.tree.leaves(labels)) if lab == "frozen"}


def size(shapes, pred=lambda p: True):
    leaves = jax.tree_util.tree_flatten_with_path(shapes, is_leaf=_is_shape)[0]
    return sum(int(np.prod(s)) for p, s in leaves if pred(path_str(p)))


BERT = bert_shapes()
BERT_ABSTRACT = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), BERT, is_leaf=_is_shape)


def test_embeddings_preset_freezes_bert_and_gpt2_embeddings():
    labels, report = make_freeze_labels(BERT_ABSTRACT, presets=["embeddings"])
    assert frozen_paths(labels) == {p for p in param_paths(BERT_ABSTRACT) if p.startswith("embeddings/")}
    assert report["matched"] == {"embeddings": 50 * 16 + 12 * 16 + 2 * 16 + 2 * 16}
    assert report["frozen_params"] == report["matched"]["embeddings"]
    assert report["trainable_params"] + report["frozen_params"] == report["total_params"] == size(BERT)
    gpt = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), gpt2_shapes(), is_leaf=_is_shape)
    labels, _ = make_freeze_labels(gpt, presets=["embeddings"])
    assert frozen_paths(labels) == {"wte/embedding", "wpe/embedding"}


def test_bottom_k_freezes_embeddings_and_the_first_k_layers():
    labels, report = make_freeze_labels(BERT_ABSTRACT, presets=["bottom:2"])
    frozen = frozen_paths(labels)
    assert frozen == {p for p in param_paths(BERT_ABSTRACT)
                      if p.startswith(("embeddings/", "encoder/layer_0/", "encoder/layer_1/"))}
    assert report["frozen_params"] == size(BERT, lambda p: p.startswith(("embeddings/", "encoder/layer_0/",
                                                                "encoder/layer_1/")))
    gpt = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s, jnp.float32), gpt2_shapes(layers=12),
                       is_leaf=_is_shape)
    labels, _ = make_freeze_labels(gpt, presets=["bottom:2"])
    assert {p.split("/")[0] for p in frozen_paths(labels)} == {"wte", "wpe", "h_0", "h_1"}  # not h_10, h_11
    with pytest.raises(ValueError, match="4 layers"):
        make_freeze_labels(BERT_ABSTRACT, presets=["bottom:5"])


def test_all_but_head_leaves_heads_and_lora_trainable():
    tree = {"base": BERT_ABSTRACT, "lora": {"encoder": {"layer_0": {"attention": {"self": {"query": {
        "a": jax.ShapeDtypeStruct((16, 2), jnp.float32),
        "b": jax.ShapeDtypeStruct((2, 16), jnp.float32)}}}}}}}
    labels, report = make_freeze_labels(tree, presets=["all_but_head"])
    trainable = set(param_paths(tree)) - frozen_paths(labels)
    assert trainable == {"base/pooler/dense/kernel", "base/pooler/dense/bias", "base/classifier/kernel",
                         "base/classifier/bias", "lora/encoder/layer_0/attention/self/query/a",
                         "lora/encoder/layer_0/attention/self/query/b"}
    assert report["trainable_params"] == 16 * 16 + 16 + 16 * 5 + 5 + 2 * 32


def test_user_regexes_are_reported_and_a_pattern_matching_nothing_is_an_error():
    labels, report = make_freeze_labels(BERT_ABSTRACT, regexes=[r"LayerNorm/", r"attention/self/query/"])
    assert report["matched"] == {"LayerNorm/": (1 + 2 * 4) * 2 * 16, "attention/self/query/": 4 * (16 * 16 + 16)}
    assert report["frozen_params"] == sum(report["matched"].values())        # these two do not overlap
    assert any("trainable" in line for line in report_lines(report))
    with pytest.raises(ValueError, match=r"'decoder/' matches no parameter; example paths: .*embeddings/"):
        make_freeze_labels(BERT_ABSTRACT, regexes=["decoder/"])
    with pytest.raises(ValueError, match="unknown freeze preset 'top:3'"):
        make_freeze_labels(BERT_ABSTRACT, presets=["top:3"])


def test_labels_tree_matches_params_tree_exactly():
    labels, _ = make_freeze_labels(BERT_ABSTRACT, presets=["bottom:1"])
    assert jax.tree.structure(labels) == jax.tree.structure(BERT_ABSTRACT)


def test_frozen_leaves_carry_no_adam_state_bytes_fall_by_the_frozen_share():
    labels, report = make_freeze_labels(BERT_ABSTRACT, presets=["bottom:3"])
    adamw = optax.adamw(1e-3, weight_decay=0.01)
    full = opt_state_bytes(jax.eval_shape(adamw.init, BERT_ABSTRACT))
    part = opt_state_bytes(jax.eval_shape(make_optimizer_with_freeze(adamw, labels).init, BERT_ABSTRACT))
    count_bytes = 4                                   # adam's int32 step count
    assert full == 2 * 4 * report["total_params"] + count_bytes            # mu and nu for every float32 leaf
    assert part == 2 * 4 * report["trainable_params"] + count_bytes        # ... only for trainable leaves
    assert full - part == 2 * 4 * report["frozen_params"]
    # The same on real arrays, and no moment leaf at all exists for a frozen path.
    params = materialize(BERT)
    state = make_optimizer_with_freeze(adamw, labels).init(params)
    assert opt_state_bytes(state) == part
    adam_states = [s for s in jax.tree.leaves(state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
                   if isinstance(s, optax.ScaleByAdamState)]
    (adam,) = adam_states
    assert len(jax.tree.leaves(adam.mu)) == len(jax.tree.leaves(params)) - len(frozen_paths(labels))


def test_frozen_params_bit_identical_and_trainable_ones_follow_plain_adamw():
    params = materialize(BERT)
    labels, _ = make_freeze_labels(params, presets=["embeddings"], regexes=[r"layer_1/"])
    frozen = frozen_paths(labels)
    adamw = optax.adamw(1e-2, weight_decay=0.1)
    tx = make_optimizer_with_freeze(adamw, labels)
    state = tx.init(params)
    # Reference: plain adamw on a flat dict holding only the trainable leaves.
    flat = dict(zip(param_paths(params), jax.tree.leaves(params)))
    ref_params = {p: x for p, x in flat.items() if p not in frozen}
    ref_state = adamw.init(ref_params)
    rng = np.random.default_rng(1)
    for _ in range(4):
        grads = jax.tree.map(lambda x: jnp.asarray(rng.normal(size=x.shape), jnp.float32), params)
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        ref_grads = {p: g for p, g in zip(param_paths(grads), jax.tree.leaves(grads)) if p not in frozen}
        ref_updates, ref_state = adamw.update(ref_grads, ref_state, ref_params)
        ref_params = optax.apply_updates(ref_params, ref_updates)
    after = dict(zip(param_paths(params), jax.tree.leaves(params)))
    for p in frozen:
        np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(flat[p]), err_msg=p)
        assert np.asarray(after[p]).tobytes() == np.asarray(flat[p]).tobytes()
    for p, x in ref_params.items():
        np.testing.assert_array_equal(np.asarray(after[p]), np.asarray(x), err_msg=p)
        assert not np.array_equal(np.asarray(after[p]), np.asarray(flat[p])), p
