"""Benchmark: the vectorised JAX Chinchilla grid fit against scipy L-BFGS-B looping over the same grid."""
from __future__ import annotations

import statistics
import time

import numpy as np

from scaling_jax.scaling.chinchilla import chinchilla_grids, fit_chinchilla
from scaling_jax.scaling.laws import HUBER_DELTA

CHINCHILLA_TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}  # Hoffmann eq. 10
# Tight tolerances, so scipy runs each start to convergence as the JAX fit does (its defaults,
# ftol 2.2e-9 absolute-ish on an objective of ~1e-3, stop far earlier).
SCIPY_OPTIONS = {"ftol": 1e-15, "gtol": 1e-12, "maxiter": 1000}


def synthetic_chinchilla(n_side: int = 16, noise: float = 0.02, seed: int = 0,
                         truth: dict = CHINCHILLA_TRUTH) -> tuple[np.ndarray, ...]:
    """(N, D, L) on an n_side x n_side grid of N in 1e7..1e10 and D in 1e9..1e12, with
    multiplicative log-normal noise of relative size `noise`."""
    rng = np.random.default_rng(seed)
    n_NxD, d_NxD = np.meshgrid(np.logspace(7, 10, n_side), np.logspace(9, 12, n_side))
    n, d = n_NxD.ravel(), d_NxD.ravel()
    loss = truth["E"] + truth["A"] / n ** truth["alpha"] + truth["B"] / d ** truth["beta"]
    return n, d, loss * np.exp(noise * rng.standard_normal(n.size))


def chinchilla_objective_np(theta, log_n, log_d, log_loss, delta: float = HUBER_DELTA):
    """The approach-3 objective and its gradient in numpy (an implementation independent of the
    JAX one): sum Huber_delta(LSE(a - alpha log N, b - beta log D, e) - log L)."""
    a, b, e, alpha, beta = theta
    terms_3xN = np.stack([a - alpha * log_n, b - beta * log_d, np.full_like(log_n, e)])
    top = terms_3xN.max(axis=0)
    exp_3xN = np.exp(terms_3xN - top)
    total = exp_3xN.sum(axis=0)
    residual = top + np.log(total) - log_loss
    abs_r = np.abs(residual)
    value = np.where(abs_r <= delta, 0.5 * residual ** 2, delta * (abs_r - 0.5 * delta)).sum()
    dr = np.clip(residual, -delta, delta) * exp_3xN / total  # dHuber/dr * softmax weights
    grad = np.array([dr[0].sum(), dr[1].sum(), dr[2].sum(), -(dr[0] * log_n).sum(),
                     -(dr[1] * log_d).sum()])
    return value, grad


def fit_scipy(params, tokens, loss, grid_SxP, options: dict = SCIPY_OPTIONS) -> dict:
    """scipy.optimize.minimize(method="L-BFGS-B") from every grid row in turn; the best wins."""
    from scipy.optimize import minimize

    data = (np.log(params), np.log(tokens), np.log(loss))
    best = None
    for start in np.asarray(grid_SxP, float):
        out = minimize(chinchilla_objective_np, start, args=data, jac=True, method="L-BFGS-B",
                       options=options)
        if np.isfinite(out.fun) and (best is None or out.fun < best.fun):
            best = out
    return {"objective": float(best.fun), "theta": best.x.tolist()}


def run_bench(grid: str = "coarse", repeats: int = 3, n_side: int = 16, seed: int = 0) -> list[dict]:
    """Times both fits side by side (alternating, `repeats` times, medians reported) on synthetic
    Chinchilla data. The JAX fit's first call, which compiles, is timed separately.

    Returns dicts with `name`, `seconds`, `objective` (best Huber objective, evaluated by the numpy
    implementation for both), `ratio` (scipy seconds / these seconds, so scipy's is 1), and
    `n_starts`, `n_points`; the JAX one also `compile_seconds` (first call minus the median).
    """
    n, d, loss = synthetic_chinchilla(n_side=n_side, seed=seed)
    starts = chinchilla_grids()[grid]
    logs = (np.log(n), np.log(d), np.log(loss))

    t0 = time.perf_counter()
    fit_chinchilla(n, d, loss, grid=starts)
    first_call = time.perf_counter() - t0
    times = {"jax": [], "scipy": []}
    results = {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        results["jax"] = fit_chinchilla(n, d, loss, grid=starts)
        times["jax"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        results["scipy"] = fit_scipy(n, d, loss, starts)
        times["scipy"].append(time.perf_counter() - t0)
    medians = {k: statistics.median(v) for k, v in times.items()}
    common = {"n_starts": int(starts.shape[0]), "n_points": int(n.size), "repeats": repeats}
    jax_value = float(chinchilla_objective_np(results["jax"]["theta"], *logs)[0])
    return [
        {"name": f"chinchilla_fit/jax_vmap_lbfgs/{grid}", "seconds": medians["jax"],
         "objective": jax_value, "ratio": medians["scipy"] / medians["jax"],
         "compile_seconds": max(first_call - medians["jax"], 0.0), **common},
        {"name": f"chinchilla_fit/scipy_lbfgsb_loop/{grid}", "seconds": medians["scipy"],
         "objective": results["scipy"]["objective"], "ratio": 1.0, **common},
    ]


if __name__ == "__main__":
    for row in run_bench():
        print(row)
