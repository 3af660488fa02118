"""Coverage of the bootstrap intervals: how often they hold the truth over many synthetic data sets from a known law."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from scaling_jax.scaling.bench_fit import CHINCHILLA_TRUTH, synthetic_chinchilla
from scaling_jax.scaling.chinchilla import chinchilla_grid, chinchilla_loss, fit_chinchilla
from scaling_jax.scaling.isoflop import fit_isoflop
from scaling_jax.scaling.optimal import chinchilla_optimal

# Starts for each refit of the study: a few points of the paper's grid (the study measures the
# intervals, not the grid search; tests/test_scaling_chinchilla.py checks the grid against scipy).
STUDY_STARTS = chinchilla_grid(a=(0, 10), b=(0, 10), e=(-1, 0.5), alpha=(0.5,), beta=(0.5,))
PARAMS = ("E", "A", "B", "alpha", "beta")


def measure_coverage(*, n_sets: int = 100, n_side: int = 12, noise: float = 0.02, n_boot: int = 100,
                     method: str = "residual", level: float = 0.95, seed: int = 0,
                     truth: dict = CHINCHILLA_TRUTH, on_set: Callable[[int, int], None] | None = None) -> dict:
    """Fits the Chinchilla law with bootstrap intervals to `n_sets` data sets drawn from `truth` on an
    n_side x n_side grid of N in 1e7..1e10 and D in 1e9..1e12 with log-normal noise of relative size
    `noise` (bench_fit.synthetic_chinchilla, seeds seed..seed+n_sets-1), and counts how often each
    parameter's `level` interval holds the true value. `on_set(i, n_sets)` is called after each set
    (a progress bar).

    Returns {name, method, n_sets, n_points, n_boot, level, noise, seconds, coverage {param: share},
    covered {param: count}, joint (share of sets where every parameter is covered), width {param: mean
    interval width}, rmse {param: root mean squared error of the point estimate}}.
    """
    covered = {k: 0 for k in PARAMS}
    joint = 0
    widths = {k: [] for k in PARAMS}
    errors = {k: [] for k in PARAMS}
    t0 = time.perf_counter()
    for i in range(n_sets):
        n, d, loss = synthetic_chinchilla(n_side=n_side, noise=noise, seed=seed + i)
        fit = fit_chinchilla(n, d, loss, grid=STUDY_STARTS, n_boot=n_boot, seed=seed + i, level=level,
                             boot_method=method)
        hits = []
        for k in PARAMS:
            lo, hi = fit["ci"][k]
            hit = bool(lo <= truth[k] <= hi)
            covered[k] += hit
            hits.append(hit)
            widths[k].append(hi - lo)
            errors[k].append(fit[k] - truth[k])
        joint += all(hits)
        if on_set is not None:
            on_set(i, n_sets)
    return {"name": f"bootstrap_coverage/{method}", "method": method, "n_sets": n_sets,
            "n_points": n_side * n_side, "n_boot": n_boot, "level": level, "noise": noise,
            "seconds": time.perf_counter() - t0,
            "coverage": {k: covered[k] / n_sets for k in PARAMS}, "covered": covered, "joint": joint / n_sets,
            "width": {k: float(np.mean(v)) for k, v in widths.items()},
            "rmse": {k: float(np.sqrt(np.mean(np.square(v)))) for k, v in errors.items()}}


def isoflop_design(truth: dict = CHINCHILLA_TRUTH, budgets=(1e18, 1e19, 1e20, 1e21), sizes: int = 7,
                   decades: float = 1.6):
    """(N, D, budget label) of an IsoFLOP sweep: `sizes` log-spaced sizes over `decades` around each
    budget's optimum, D = C / (6 N)."""
    n, d, label = [], [], []
    for i, c in enumerate(budgets):
        grid = chinchilla_optimal(truth, c)["N_opt"] * np.logspace(-decades / 2, decades / 2, sizes)
        n += list(grid)
        d += list(c / (6 * grid))
        label += [i] * sizes
    return np.array(n), np.array(d), np.array(label)


def measure_isoflop_coverage(*, n_sets: int = 100, noise: float = 0.005, n_boot: int = 200,
                             method: str = "residual", level: float = 0.95, seed: int = 0,
                             truth: dict = CHINCHILLA_TRUTH) -> dict:
    """Coverage of approach 2's intervals (fit_isoflop) for the exponent `a` and every budget's
    N_opt over `n_sets` noisy copies of `isoflop_design`. The target is what the estimator estimates:
    the vertices of the parabolas through the noiseless losses (a parabola is not the profile's exact
    shape, so its vertex sits a few percent off the true optimum at any noise level)."""
    n, d, label = isoflop_design(truth)
    clean = chinchilla_loss(n, d, truth)
    target = fit_isoflop(n, d, clean, budgets=label)
    hits_a, hits_n, total_n = 0, 0, 0
    t0 = time.perf_counter()
    for i in range(n_sets):
        rng = np.random.default_rng(seed + i)
        fit = fit_isoflop(n, d, clean * np.exp(noise * rng.standard_normal(n.size)), budgets=label,
                          n_boot=n_boot, seed=seed + i, level=level, boot_method=method)
        lo, hi = fit["ci"]["a"]
        hits_a += lo <= target["a"] <= hi
        for row, want in zip(fit["budgets"], target["budgets"]):
            lo, hi = row["ci"]["N_opt"]
            hits_n += lo <= want["N_opt"] <= hi
            total_n += 1
    return {"name": f"isoflop_coverage/{method}", "method": method, "n_sets": n_sets, "n_points": int(n.size),
            "n_boot": n_boot, "level": level, "noise": noise, "seconds": time.perf_counter() - t0,
            "coverage": {"a": hits_a / n_sets, "N_opt": hits_n / total_n}}


__all__ = ["isoflop_design", "measure_coverage", "measure_isoflop_coverage"]
