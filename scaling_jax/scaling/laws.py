"""What a scaling law is to the fitter: its log-space prediction, Huber objective, start grid and names."""
from __future__ import annotations

import dataclasses
import functools
import itertools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

# Hoffmann et al. (2022), approach 3: Huber loss with delta = 1e-3 on log-loss residuals. With
# residuals of a few percent this is close to least absolute deviations, hence robust to outliers.
HUBER_DELTA = 1e-3


@dataclasses.dataclass(frozen=True, eq=False)
class Law:
    """A law L(x_1..x_K) fitted in log space over unconstrained coordinates theta.

    log_predict(theta_P, logx_KxN) -> log L_N (JAX). to_params(theta_P) -> the law's public
    parameters (plain floats). predict(params, *x) -> L (numpy). eq=False: a Law hashes by
    identity, so its `objective` is a stable static argument to jit (one compile per law).
    """
    name: str
    inputs: tuple[str, ...]  # what x_1..x_K are, e.g. ("params", "tokens")
    theta_names: tuple[str, ...]
    param_names: tuple[str, ...]
    log_predict: Callable
    to_params: Callable[[np.ndarray], dict]
    predict: Callable
    default_grid: Callable[[], np.ndarray]  # starting points theta_SxP
    objective: Callable = dataclasses.field(init=False)

    def __post_init__(self):
        log_predict = self.log_predict

        def objective(theta_P, logx_KxN, logy_N, weight_N):
            return jnp.sum(weight_N * huber(log_predict(theta_P, logx_KxN) - logy_N))

        object.__setattr__(self, "objective", objective)

    @property
    def n_params(self) -> int:
        return len(self.theta_names)


def product_grid(**values) -> np.ndarray:
    """All combinations of the given per-coordinate values, in keyword order: theta_SxP."""
    return np.array(list(itertools.product(*(np.asarray(v, float) for v in values.values()))))


def huber(r, delta: float = HUBER_DELTA):
    """Huber loss: r^2/2 for |r| <= delta, delta (|r| - delta/2) beyond; as optax.losses.huber_loss
    but written with min(), which XLA differentiates about twice as fast under vmap."""
    abs_r = jnp.abs(r)
    inner = jnp.minimum(abs_r, delta)
    return inner * (abs_r - 0.5 * inner)


@jax.custom_jvp
def logsumexp_terms(*terms):
    """log(sum(exp(terms))) over a few broadcastable terms, stable (the LSE of Hoffmann et al.).

    The explicit form and the hand-written derivative (softmax weights) make the value and gradient
    several times faster than stacking into jax.nn.logsumexp; the fit spends its time here."""
    top = functools.reduce(jnp.maximum, terms)
    return top + jnp.log(sum(jnp.exp(t - top) for t in terms))


@logsumexp_terms.defjvp
def _logsumexp_terms_jvp(primals, tangents):
    out = logsumexp_terms(*primals)
    return out, sum(jnp.exp(p - out) * t for p, t in zip(primals, tangents))
