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
    parameters (plain floats). predict(params, *x) -> L (numpy). `objective` is the same function
    object for every law with this log_predict: a stable static argument to jit.
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
        object.__setattr__(self, "objective", _huber_objective(self.log_predict))

    @property
    def n_params(self) -> int:
        return len(self.theta_names)


@functools.cache
def _huber_objective(log_predict: Callable) -> Callable:
    """sum_n w_n Huber(log_predict(theta, log x)_n - log y_n): one function object per
    log_predict, so laws sharing a form (power law in N and in D) share compiled programs."""

    def objective(theta_P, logx_KxN, logy_N, weight_N):
        return jnp.sum(weight_N * huber(log_predict(theta_P, logx_KxN) - logy_N))

    return objective


def pad_points(logx_KxN, logy_N, weight_BxN) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pads the points axis with zero-weight dummies (log x = log y = 0) to a power of 2 (at least
    16) up to 256, then a multiple of 256, so fits to nearby numbers of points (a law in N and in
    D, say) reuse one compiled program."""
    n = np.shape(logy_N)[0]
    extra = (max(16, 1 << (n - 1).bit_length()) if n <= 256 else -(-n // 256) * 256) - n
    return (np.pad(np.asarray(logx_KxN, float), ((0, 0), (0, extra))),
            np.pad(np.asarray(logy_N, float), (0, extra)),
            np.pad(np.asarray(weight_BxN, float), ((0, 0), (0, extra))))


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
