"""`TrainState`: the whole mutable state of a run as one plain pytree."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import struct


@struct.dataclass
class TrainState:
    """step (int32 scalar), params, opt_state, rng: everything a resumed run needs, nothing static.

    The model and optimizer are not stored here (they are bound to the step with functools.partial),
    so the state saves, restores and shards like any other pytree.
    """

    step: jax.Array
    params: Any
    opt_state: Any
    rng: jax.Array

    @classmethod
    def create(cls, params: Any, tx: optax.GradientTransformation, rng: jax.Array) -> "TrainState":
        return cls(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params), rng=rng)
