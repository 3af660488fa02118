"""Compute-optimal allocation under C = 6 N D: N_opt(C), D_opt(C) and the loss they reach."""
from __future__ import annotations

import numpy as np

from scaling_jax.scaling.bootstrap import percentile_interval


def _positive_budget(budget) -> np.ndarray:
    c = np.asarray(budget, float)
    if not np.all(np.isfinite(c) & (c > 0)):
        raise ValueError(f"compute budget must be positive and finite FLOPs, got {budget!r}")
    return c


def _out(value):
    return float(value) if np.ndim(value) == 0 else np.asarray(value)


def chinchilla_optimal(fit: dict, budget) -> dict:
    """Minimises E + A/N^alpha + B/D^beta subject to 6 N D = C, in closed form (Hoffmann et al.
    2022, eq. 4): G = (alpha A / (beta B))^(1/(alpha+beta)),
    N_opt = G (C/6)^(beta/(alpha+beta)), D_opt = (C/6)^(alpha/(alpha+beta)) / G.
    `budget` C in FLOPs, a number or an array; returns N_opt, D_opt, loss, and the exponents a, b.
    """
    c = _positive_budget(budget)
    E, A, B = (np.asarray(fit[k], float) for k in ("E", "A", "B"))
    alpha, beta = np.asarray(fit["alpha"], float), np.asarray(fit["beta"], float)
    total = alpha + beta
    g = (alpha * A / (beta * B)) ** (1.0 / total)
    n_opt = g * (c / 6.0) ** (beta / total)
    d_opt = (c / 6.0) ** (alpha / total) / g
    loss = E + A / n_opt ** alpha + B / d_opt ** beta
    return {"budget": _out(c), "N_opt": _out(n_opt), "D_opt": _out(d_opt), "loss": _out(loss),
            "a": _out(beta / total), "b": _out(alpha / total)}


def isoflop_optimal(fit: dict, budget) -> dict:
    """N_opt = N_coef C^a and D_opt = D_coef C^b under an IsoFLOP fit (fit_isoflop)."""
    c = _positive_budget(budget)
    return {"budget": _out(c), "N_opt": _out(fit["N_coef"] * c ** fit["a"]),
            "D_opt": _out(fit["D_coef"] * c ** fit["b"])}


def chinchilla_optimal_ci(samples: dict, budget: float, level: float = 0.95) -> dict:
    """Percentile intervals of N_opt, D_opt and loss at one budget across bootstrap refits
    (`samples` as returned by fit_chinchilla(..., n_boot=...)["samples"])."""
    per_refit = chinchilla_optimal({k: np.asarray(samples[k]) for k in ("E", "A", "B", "alpha",
                                                                          "beta")},
                                   np.full(np.shape(samples["E"]), float(budget)))
    return {k: percentile_interval(per_refit[k], level) for k in ("N_opt", "D_opt", "loss")}
