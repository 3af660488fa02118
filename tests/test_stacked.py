"""stack_layers: the optimizer over stacked per-layer leaves gives plain optax's numbers (the
reference), keeps frozen leaves without moments, and its stacked state is sharded like the layers."""
import jax
import numpy as np
import optax
from jax.sharding import PartitionSpec as P

from scaling_jax.config import OptimConfig
from scaling_jax.mesh import DEFAULT_RULES, make_mesh
from scaling_jax.models import BertConfig, init_model
from scaling_jax.train.freeze import make_freeze_labels, opt_state_bytes
from scaling_jax.train.optim import make_optimizer
from scaling_jax.train.step import init_state
from test_freeze import BERT, gpt2_shapes, materialize


def _run(tx, params, steps=3):
    state = tx.init(params)
    update = jax.jit(tx.update)
    for i in range(steps):
        grads = jax.tree.map(lambda p: jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(i), p.size), p.shape),
                             params)
        updates, state = update(grads, state, params)
        params = optax.apply_updates(params, updates)
    return params, state


def _stacked_leaves(state):
    return {jax.tree_util.keystr(p): x.shape for p, x in jax.tree_util.tree_leaves_with_path(state)
            if "_*" in jax.tree_util.keystr(p)}


def test_stacked_adamw_matches_optax_on_bert_and_gpt2_trees():
    cfg = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.1, clip_norm=1.0, warmup_steps=1)
    for shapes, n_layers in ((BERT, 4), (gpt2_shapes(), 3)):
        params = materialize(shapes)
        plain, _ = make_optimizer(cfg, 10)
        stacked, _ = make_optimizer(cfg, 10, stack_layers=True)
        ref, ref_state = _run(plain, params)
        got, state = _run(stacked, params)
        for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
        # Moments: one [n_layers, ...] array per layer leaf kind instead of n_layers arrays.
        stacked_shapes = _stacked_leaves(state)
        assert stacked_shapes and all(s[0] == n_layers for s in stacked_shapes.values())
        assert len(jax.tree.leaves(state)) < len(jax.tree.leaves(ref_state))
        assert sum(x.size for x in jax.tree.leaves(state)) == sum(x.size for x in jax.tree.leaves(ref_state))


def test_stacked_with_frozen_layers_keeps_them_without_moments():
    params = materialize(BERT)
    labels, _ = make_freeze_labels(jax.eval_shape(lambda p: p, params), presets=["bottom:2"])
    cfg = OptimConfig(name="adamw", lr=1e-2, weight_decay=0.0, clip_norm=0.0)
    plain, _ = make_optimizer(cfg, 10, freeze_labels=labels)
    stacked, _ = make_optimizer(cfg, 10, freeze_labels=labels, stack_layers=True)
    ref, ref_state = _run(plain, params)
    got, state = _run(stacked, params)
    for a, b in zip(jax.tree.leaves(ref), jax.tree.leaves(got)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    for name in ("layer_0", "layer_1"):
        for a, b in zip(jax.tree.leaves(params["encoder"][name]), jax.tree.leaves(got["encoder"][name])):
            np.testing.assert_array_equal(a, b)
    assert opt_state_bytes(state) == opt_state_bytes(ref_state)  # moments for the trainable leaves only
    assert all(s[0] == 2 for s in _stacked_leaves(state).values())  # layers 2 and 3 stacked


def test_stacked_moments_are_sharded_like_their_layers():
    cfg = BertConfig(vocab_size=96, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
                     max_position_embeddings=16)
    model = init_model(cfg, "token_classification", num_labels=4, scan_layers=True)
    mesh = make_mesh(2, 4, 1)
    labels, _ = make_freeze_labels(jax.eval_shape(lambda p: p, model.params), presets=["embeddings"])
    tx, _ = make_optimizer(OptimConfig(name="adamw", lr=1e-3), 10, freeze_labels=labels, stack_layers=True)
    state, state_sh = init_state(model.params, model.logical_axes(), tx, mesh=mesh, rules=DEFAULT_RULES)
    kernel = state.params["encoder"]["layer_1"]["intermediate"]["dense"]["kernel"]
    assert kernel.sharding.spec != P()  # the layer kernel is split (fsdp)
    moments = {jax.tree_util.keystr(p): x for p, x in jax.tree_util.tree_leaves_with_path(state.opt_state)}
    mu = next(x for k, x in moments.items() if "mu" in k and "layer_*" in k and "intermediate" in k and "kernel" in k)
    assert mu.shape == (3, *kernel.shape)
    assert mu.sharding.spec == P(None, *kernel.sharding.spec)
    # An unstacked moment under optax.partition ('train' key in its path) is sharded like its param.
    cls = state.params["classifier"]["kernel"]
    mu_cls = next(x for k, x in moments.items() if "mu" in k and "classifier" in k and "kernel" in k)
    assert mu_cls.sharding.spec == cls.sharding.spec


def test_scanned_train_step_with_stacked_optimizer_matches_the_plain_step():
    from scaling_jax.models import GPT2Config
    from scaling_jax.train.state import TrainState
    from scaling_jax.train.step import make_train_step
    # No dropout: scanned layers draw their masks from keys folded with the layer index, not per module.
    cfg = GPT2Config(vocab_size=61, n_positions=16, n_embd=32, n_layer=3, n_head=4, resid_pdrop=0.0, embd_pdrop=0.0,
                     attn_pdrop=0.0)
    ids = np.asarray(jax.random.randint(jax.random.PRNGKey(0), (4, 16), 0, 61), np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    runs = []
    for scan in (False, True):
        model = init_model(cfg, "causal_lm", seed=0, scan_layers=scan)
        tx, _ = make_optimizer(OptimConfig(name="adamw", lr=1e-3, clip_norm=1.0), 10, stack_layers=scan)
        step = make_train_step(model, tx, stack_layers=scan)
        state, metrics = TrainState.create(model.params, tx, jax.random.PRNGKey(1)), []
        for _ in range(3):
            state, m = step(state, batch)
            metrics.append((float(m["train/loss"]), float(m["train/grad_norm"])))
        runs.append((state.params, np.array(metrics)))
    np.testing.assert_allclose(runs[1][1], runs[0][1], rtol=1e-5)
    for a, b in zip(jax.tree.leaves(runs[0][0]), jax.tree.leaves(runs[1][0])):
        np.testing.assert_allclose(b, a, atol=2e-6, rtol=0)
