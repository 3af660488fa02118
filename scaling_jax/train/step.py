"""Pure train/eval steps and the one place that jits them with shardings and donation."""
from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding

from scaling_jax.mesh import shardings_from_logical, state_shardings_like_params
from scaling_jax.models.hf import PACKED_INPUTS
from scaling_jax.train.losses import loss_for_task
from scaling_jax.train.stacked import stacked_norm
from scaling_jax.train.state import TrainState

Batch = dict
Metrics = dict


def _identity(params: Any) -> Any:
    return params


def _forward(params: Any, batch: Batch, *, apply_fn: Callable, train: bool, rng: jax.Array | None):
    packed = {k: batch[k] for k in PACKED_INPUTS if k in batch}  # packed rows (data/packing.py)
    return apply_fn(params, batch["input_ids"], batch.get("attention_mask"), batch.get("token_type_ids"),
                    train=train, rng=rng, **packed)


def _split_micro(x_BxN: jax.Array, k: int) -> jax.Array:
    """[B, ...] -> [k, B/k, ...] taking rows j, j+k, j+2k... for micro-batch j.

    Strided (not contiguous) micro-batches keep every micro-batch spread over all data shards, so
    the batch never moves between devices.
    """
    B = x_BxN.shape[0]
    return jnp.swapaxes(x_BxN.reshape(B // k, k, *x_BxN.shape[1:]), 0, 1)


def train_step(state: TrainState, batch: Batch, *, apply_fn: Callable, loss_fn: Callable,
               tx: optax.GradientTransformation, grad_accum: int = 1, skip_nonfinite: bool = False,
               param_fn: Callable = _identity, stack_layers: bool = False) -> tuple[TrainState, Metrics]:
    """One optimizer update on a global batch, accumulated over `grad_accum` micro-batches.

    The loss is the mean over all counted targets of the whole batch (sum / count), so k micro-batches
    give the same loss and gradients as one big batch. `param_fn` maps the trained tree to the
    model's params (e.g. merging LoRA factors). With `skip_nonfinite`, a step whose loss or gradient
    is not finite leaves params and optimizer state unchanged (the step counter still advances).
    `stack_layers` computes the gradient norm over stacked per-layer leaves (train/stacked.py), as
    `stack_layers(tx)` does the update: same number, a few kernels instead of one per layer leaf.
    """
    rng = jax.random.fold_in(state.rng, state.step)  # a resumed run draws the same numbers

    def sum_loss(params, micro, micro_rng):
        logits = _forward(param_fn(params), micro, apply_fn=apply_fn, train=True, rng=micro_rng)
        loss_sum, count, correct = loss_fn(logits, micro)
        return loss_sum, (count, correct)

    if grad_accum == 1:
        def mean_loss(params):  # the count depends on labels only: dividing here saves a pass over grads
            loss_sum, (count, correct) = sum_loss(params, batch, rng)
            return loss_sum / jnp.maximum(count, 1.0), (count, correct)

        (loss, (count, correct)), grads = jax.value_and_grad(mean_loss, has_aux=True)(state.params)
        denom = jnp.maximum(count, 1.0)
    else:
        grad_fn = jax.value_and_grad(sum_loss, has_aux=True)
        micro_batches = jax.tree.map(lambda x: _split_micro(x, grad_accum), batch)

        def body(carry, xs):
            j, micro = xs
            (l, (c, a)), g = grad_fn(state.params, micro, jax.random.fold_in(rng, j))
            acc_g, acc_l, acc_c, acc_a = carry
            return (jax.tree.map(jnp.add, acc_g, g), acc_l + l, acc_c + c, acc_a + a), None

        zeros = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.float32), state.params)
        init = (zeros, jnp.float32(0), jnp.float32(0), jnp.float32(0))
        (grads, loss_sum, count, correct), _ = jax.lax.scan(
            body, init, (jnp.arange(grad_accum), micro_batches))
        denom = jnp.maximum(count, 1.0)
        loss = loss_sum / denom
        grads = jax.tree.map(lambda g: g / denom, grads)

    grad_norm = stacked_norm(grads) if stack_layers else optax.tree.norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    if skip_nonfinite:
        keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)
        params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    metrics = {"train/loss": loss, "train/accuracy": correct / denom, "train/grad_norm": grad_norm,
               "train/tokens": count, "train/finite": finite}
    return new_state, metrics


def eval_step(params: Any, batch: Batch, *, apply_fn: Callable, loss_fn: Callable,
              param_fn: Callable = _identity) -> dict:
    """Sums for exact aggregation over batches (loss_sum, count, correct) and argmax predictions."""
    logits = _forward(param_fn(params), batch, apply_fn=apply_fn, train=False, rng=None)
    loss_sum, count, correct = loss_fn(logits, batch)
    return {"loss_sum": loss_sum, "count": count, "correct": correct,
            "predictions": jnp.argmax(logits, axis=-1).astype(jnp.int32)}


def make_train_step(model: Any, tx: optax.GradientTransformation, *, mesh: Mesh | None = None,
                    state_sharding: Any = None, batch_sharding: NamedSharding | None = None,
                    grad_accum: int = 1, skip_nonfinite: bool = False, param_fn: Callable = _identity,
                    task: str | None = None, donate: bool = True, stack_layers: bool = False) -> Callable:
    """`jax.jit(train_step)` bound to `model` (anything with `.apply` and `.task`) and `tx`.

    With `state_sharding` and `batch_sharding` (NamedShardings over `mesh`), inputs and outputs are
    pinned to them, so parameters and optimizer state stay sharded across steps; the state buffer is
    donated so an update needs no second copy of it.
    """
    fn = functools.partial(train_step, apply_fn=model.apply, loss_fn=loss_for_task(task or model.task),
                           tx=tx, grad_accum=grad_accum, skip_nonfinite=skip_nonfinite, param_fn=param_fn,
                           stack_layers=stack_layers)
    kwargs: dict[str, Any] = {"donate_argnums": (0,) if donate else ()}
    if state_sharding is not None:
        replicated = NamedSharding(mesh, jax.sharding.PartitionSpec()) if mesh is not None else None
        kwargs["in_shardings"] = (state_sharding, batch_sharding)
        kwargs["out_shardings"] = (state_sharding, replicated)
    return jax.jit(fn, **kwargs)


def make_eval_step(model: Any, *, mesh: Mesh | None = None, params_sharding: Any = None,
                   batch_sharding: NamedSharding | None = None, param_fn: Callable = _identity,
                   task: str | None = None) -> Callable:
    """`jax.jit(eval_step)`: `(params, batch) -> {loss_sum, count, correct, predictions}`."""
    fn = functools.partial(eval_step, apply_fn=model.apply, loss_fn=loss_for_task(task or model.task),
                           param_fn=param_fn)
    if params_sharding is None:
        return jax.jit(fn)
    # Outputs replicated, so every process can read all predictions (multi-host eval).
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    return jax.jit(fn, in_shardings=(params_sharding, batch_sharding), out_shardings=replicated)


def init_state(params: Any, logical: Any, tx: optax.GradientTransformation, *, mesh: Mesh,
               rules: dict, seed: int = 0) -> tuple[TrainState, TrainState]:
    """Places `params` by their logical axes and builds the optimizer state already sharded.

    `tx.init` runs under `jax.jit` with out_shardings, so Adam moments are born on the devices
    that own their parameter shard (an eager `tx.init(params)` would put them all on one device).
    Returns (state, state_sharding).
    """
    rng = jax.random.PRNGKey(seed)
    params_abstract = jax.eval_shape(lambda p: p, params)
    params_sh = shardings_from_logical(params_abstract, logical, mesh, rules)
    abstract = jax.eval_shape(lambda p: TrainState.create(p, tx, rng), params_abstract)
    replicated = NamedSharding(mesh, jax.sharding.PartitionSpec())
    state_sh = TrainState(step=replicated, params=params_sh,
                          opt_state=state_shardings_like_params(abstract.opt_state, params_abstract,
                                                                params_sh, mesh),
                          rng=replicated)
    params = jax.device_put(params, params_sh)
    create = jax.jit(lambda p, r: TrainState.create(p, tx, r), out_shardings=state_sh)
    return create(params, rng), state_sh
