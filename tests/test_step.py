"""The pure sharded train step: same numbers on any mesh, real sharding, exact gradient accumulation."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import scaling_jax as sj
from scaling_jax.mesh import MeshError, check_batch
from scaling_jax.models import BertConfig, GPT2Config, init_model
from scaling_jax.train.losses import loss_for_task
from scaling_jax.train.step import train_step

GPT = GPT2Config(vocab_size=128, n_positions=32, n_embd=32, n_layer=2, n_head=4)


def _batches(n, B=8, L=16, vocab=128, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        start = rng.integers(0, vocab, (B, 1))
        ids = ((start + np.arange(L)) % vocab).astype(np.int32)  # learnable: next = this + 1
        mask = np.ones_like(ids)
        mask[: B // 2, L - 3:] = 0  # some right padding
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def _run(mesh_shape, steps=5, devices=None, perturb=0.0):
    model = init_model(GPT, "causal_lm", seed=0)
    if perturb:  # every param times (1 +- perturb): a roundoff-sized change of the starting point
        signs = np.random.default_rng(5)
        model = dataclasses.replace(model, params=jax.tree.map(
            lambda x: x * (1 + perturb * signs.choice([-1.0, 1.0], size=x.shape)).astype(np.float32), model.params))
    mesh = sj.make_mesh(*mesh_shape, devices=devices)
    tx = optax.adamw(1e-2)
    state, state_sh = sj.init_state(model.params, model.logical_axes(), tx, mesh=mesh, rules=sj.DEFAULT_RULES)
    step = sj.make_train_step(model, tx, mesh=mesh, state_sharding=state_sh, batch_sharding=sj.batch_sharding(mesh))
    losses = []
    for b in _batches(steps):
        state, m = step(state, b)
        losses.append(float(m["train/loss"]))
    return np.array(losses), state


def test_same_losses_and_params_on_1_device_2x2x2_and_data8():
    l1, s1 = _run((1, 1, 1), devices=jax.devices()[:1])
    # Control: the same single-device run from a start moved by 1e-7 (relative). How far each param
    # then drifts is this trajectory's own roundoff sensitivity: Adam divides by sqrt(v), so a
    # unit whose gradient is small next to roundoff moves by roundoff x lr / |g| (measured: one GPT
    # MLP unit drifts 1e-4 after 5 steps from a 1e-7 nudge, the other params under 1e-5).
    _, s_nudged = _run((1, 1, 1), devices=jax.devices()[:1], perturb=1e-7)
    l222, s222 = _run((2, 2, 2))
    l8, s8 = _run((8, 1, 1))
    np.testing.assert_allclose(l222, l1, atol=1e-5, rtol=0)
    np.testing.assert_allclose(l8, l1, atol=1e-5, rtol=0)
    paths = jax.tree_util.tree_leaves_with_path(s1.params)
    for other in (s222, s8):
        for (path, a), n, b in zip(paths, jax.tree.leaves(s_nudged.params), jax.tree.leaves(other.params)):
            name = jax.tree_util.keystr(path)
            if "['key']['bias']" in name:
                # Softmax is invariant to the key bias, so its true gradient is 0 and what autodiff
                # returns is roundoff, which Adam scales up to steps of about lr: not comparable
                # across reduction orders. It must stay at roundoff size.
                assert np.abs(np.asarray(b)).max() < 1e-3, name
                continue
            # 3e-5 after 5 Adam steps at lr 1e-2 is 0.3% of one step, plus 4x the control's largest
            # drift in this array (a sharding bug moves params by ~lr = 1e-2 and the losses above).
            a, b = np.asarray(a), np.asarray(b)
            tol = 3e-5 + 4 * np.abs(np.asarray(n) - a).max()
            assert np.abs(b - a).max() <= tol, f"{name}: differs by {np.abs(b - a).max():.2e} > {tol:.2e}"
    assert l1[-1] < l1[0], "the loss should fall over 5 steps"


def test_params_and_adam_moments_are_really_sharded():
    _, state = _run((2, 2, 2), steps=1)
    q = state.params["h_0"]["attn"]["query"]["kernel"]  # (embed=32, heads=32) -> (fsdp, tensor)
    assert q.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert q.addressable_shards[0].data.shape == (16, 16)
    adam = [s for s in jax.tree.leaves(state.opt_state, is_leaf=lambda x: isinstance(x, optax.ScaleByAdamState))
            if isinstance(s, optax.ScaleByAdamState)][0]
    mu = adam.mu["h_0"]["attn"]["query"]["kernel"]
    assert mu.sharding.spec == q.sharding.spec and mu.addressable_shards[0].data.shape == (16, 16)
    wte = state.params["wte"]["embedding"]  # (vocab=128, embed=32) -> (tensor, fsdp)
    assert wte.addressable_shards[0].data.shape == (64, 16)


def test_grad_accumulation_equals_one_big_batch():
    model = init_model(BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32,
                                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0),
                       "token_classification", num_labels=5, seed=0)
    rng = np.random.default_rng(1)
    ids = rng.integers(0, 64, (8, 12), dtype=np.int32)
    labels = rng.integers(0, 5, (8, 12), dtype=np.int32)
    labels[rng.random((8, 12)) < 0.4] = -100  # uneven counts per micro-batch
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids), "labels": labels}
    tx = optax.sgd(1.0)  # the update equals -grad, so params compare gradients
    state = sj.TrainState.create(model.params, tx, jax.random.PRNGKey(0))
    kw = dict(apply_fn=model.apply, loss_fn=loss_for_task("token_classification"), tx=tx)
    one, m1 = jax.jit(lambda s, b: train_step(s, b, grad_accum=1, **kw))(state, batch)
    four, m4 = jax.jit(lambda s, b: train_step(s, b, grad_accum=4, **kw))(state, batch)
    assert abs(float(m1["train/loss"]) - float(m4["train/loss"])) <= 1e-6
    for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(four.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), atol=1e-6, rtol=0)


def test_nonfinite_step_is_skipped_when_asked():
    model = init_model(GPT, "causal_lm", seed=0)
    tx = optax.adamw(1e-2)
    state = sj.TrainState.create(model.params, tx, jax.random.PRNGKey(0))
    poisoned = jax.tree.map(lambda p: p * jnp.nan, state.params)
    bad_apply = lambda params, *a, **k: model.apply(poisoned, *a, **k)
    new, m = jax.jit(lambda s, b: train_step(s, b, apply_fn=bad_apply, loss_fn=loss_for_task("causal_lm"),
                                             tx=tx, skip_nonfinite=True))(state, _batches(1)[0])
    assert not bool(m["train/finite"]) and int(new.step) == 1
    for a, b in zip(jax.tree.leaves(state.params), jax.tree.leaves(new.params)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_batch_that_does_not_divide_over_data_axes_is_an_error():
    mesh = sj.make_mesh(4, 2, 1)
    with pytest.raises(MeshError, match="batch size 12 does not divide over the mesh's batch axes"):
        check_batch(12, mesh)
