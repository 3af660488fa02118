"""Hoffmann et al.'s three estimates of N_opt(C) on one IsoFLOP results table: the lower envelope, parabolas, the L(N, D) fit."""
from __future__ import annotations

import numpy as np

from scaling_jax.scaling.bootstrap import percentile_interval
from scaling_jax.scaling.chinchilla import chinchilla_grids, fit_chinchilla
from scaling_jax.scaling.isoflop import (budget_labels, fit_isoflop, flops_per_token_model, power_in_compute,
                                         run_compute)
from scaling_jax.scaling.validate import check_points

# Approach 3's N_opt(C) is found numerically on this many log-spaced sizes, within this many decades
# around the data's sizes, then refined by a parabola through the best three (FLOPs per token need
# not be 6 N, so the closed form of optimal.chinchilla_optimal does not apply).
_SEARCH_POINTS = 4001
_SEARCH_DECADES = 3.0


def lower_envelope(params, tokens, loss, *, flops=None, budgets=None) -> dict:
    """Approach 1 on final losses: at every budget the run with the lowest loss (the lower envelope
    of loss against compute, sampled at the budgets), then N_opt = N_coef C^a and D_opt = D_coef C^b
    through those runs. `falls` says whether the envelope's loss falls as compute grows.

    (Hoffmann et al. take the envelope over whole training curves of runs with matched cosine
    schedules; a sweep whose runs end at the budgets has only its final points.)"""
    arrays = check_points({"params": params, "tokens": tokens, "loss": loss})
    n, d, y = arrays["params"], arrays["tokens"], arrays["loss"]
    compute = run_compute(n, d, flops)
    labels = budget_labels(compute, budgets)
    rows = []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        best = members[np.argmin(y[members])]
        rows.append({"C": float(np.exp(np.mean(np.log(compute[members])))), "N_opt": float(n[best]),
                     "D_opt": float(d[best]), "loss": float(y[best]), "n_points": int(members.size),
                     "at_edge": bool(n[best] in (n[members].min(), n[members].max()))})
    rows.sort(key=lambda r: r["C"])
    out = {"law": "envelope", "budgets": rows,
           "falls": bool(all(b["loss"] < a["loss"] for a, b in zip(rows, rows[1:])))}
    if len(rows) >= 2:
        c = [r["C"] for r in rows]
        out["a"], out["N_coef"] = power_in_compute(c, [r["N_opt"] for r in rows])
        out["b"], out["D_coef"] = power_in_compute(c, [r["D_opt"] for r in rows])
    return out


def _optimal_sizes(fit_EABab: dict, budgets_C, fpt, n_range) -> np.ndarray:
    """N_opt_KxC: for each of K parameter sets (arrays of shape K) and each budget, the N that
    minimises E + A/N^alpha + B/D^beta on the budget's line D = C / fpt(N)."""
    lo, hi = np.log(n_range[0]) - _SEARCH_DECADES * np.log(10), np.log(n_range[1]) + _SEARCH_DECADES * np.log(10)
    log_n = np.linspace(lo, hi, _SEARCH_POINTS)
    n = np.exp(log_n)
    per_token = fpt(n)
    A, B, alpha, beta = (np.asarray(fit_EABab[k], float).reshape(-1, 1, 1) for k in ("A", "B", "alpha", "beta"))
    d_CxS = np.asarray(budgets_C, float)[:, None] / per_token[None, :]
    loss_KxCxS = A / n[None, None, :] ** alpha + B / d_CxS[None] ** beta  # E is a constant: left out
    best = np.clip(np.argmin(loss_KxCxS, axis=-1), 1, _SEARCH_POINTS - 2)
    # Parabola through the best grid point and its neighbours (equal spacing h): vertex offset.
    y0, y1, y2 = (np.take_along_axis(loss_KxCxS, (best + k)[..., None], -1)[..., 0] for k in (-1, 0, 1))
    denom = y0 - 2 * y1 + y2
    shift = np.where(denom > 0, 0.5 * (y0 - y2) / np.where(denom > 0, denom, 1.0), 0.0)
    return np.exp(log_n[best] + np.clip(shift, -1, 1) * (log_n[1] - log_n[0]))


def chinchilla_approach(params, tokens, loss, *, flops=None, budgets=None, n_boot: int = 0, seed: int = 0,
                        level: float = 0.95, grid: str = "coarse", boot_method: str = "pairs") -> dict:
    """Approach 3: the Chinchilla fit L(N, D) on every run, then N_opt at each budget by minimising
    it along D = C / fpt(N), with fpt the runs' own FLOPs per token (`flops_per_token_model`; 6 N
    without `flops`, where this equals optimal.chinchilla_optimal). With n_boot, the same per
    bootstrap refit gives intervals for every N_opt, D_opt and the exponent `a`."""
    arrays = check_points({"params": params, "tokens": tokens, "loss": loss})
    n, d, y = arrays["params"], arrays["tokens"], arrays["loss"]
    compute = run_compute(n, d, flops)
    labels = budget_labels(compute, budgets)
    c = np.sort([float(np.exp(np.mean(np.log(compute[labels == k])))) for k in np.unique(labels)])
    fpt = (lambda x: 6.0 * np.asarray(x, float)) if flops is None else flops_per_token_model(n, compute, d)
    fit = fit_chinchilla(n, d, y, grid=chinchilla_grids()[grid], n_boot=n_boot, seed=seed, level=level,
                         boot_method=boot_method)
    n_opt = _optimal_sizes(fit, c, fpt, (n.min(), n.max()))[0]
    rows = [{"C": float(ci), "N_opt": float(ni), "D_opt": float(ci / fpt(ni))} for ci, ni in zip(c, n_opt)]
    out = {"law": "chinchilla_optimal", "fit": {k: fit[k] for k in ("E", "A", "B", "alpha", "beta")},
           "budgets": rows}
    if c.size >= 2:
        out["a"], out["N_coef"] = power_in_compute(c, n_opt)
        out["b"], out["D_coef"] = power_in_compute(c, [r["D_opt"] for r in rows])
    if n_boot:
        out["fit"]["ci"] = fit["ci"]
        samples = {k: np.asarray(fit["samples"][k]) for k in ("A", "B", "alpha", "beta")}
        ok = np.all([np.isfinite(v) for v in samples.values()], axis=0)
        n_KxC = _optimal_sizes({k: v[ok] for k, v in samples.items()}, c, fpt, (n.min(), n.max()))
        for i, row in enumerate(rows):
            row["ci"] = {"N_opt": percentile_interval(n_KxC[:, i], level),
                         "D_opt": percentile_interval(c[i] / fpt(n_KxC[:, i]), level)}
        if c.size >= 2:
            slopes = np.polyfit(np.log(c), np.log(n_KxC.T), 1)[0]
            out["ci"] = {"a": percentile_interval(slopes, level)}
        out["bootstrap"] = fit["bootstrap"]
    return out


def compare_approaches(params, tokens, loss, *, flops=None, budgets=None, n_boot: int = 200, seed: int = 0,
                       level: float = 0.95, grid: str = "coarse") -> dict:
    """Approaches 1, 2 and 3 of Hoffmann et al. (2022) on the same runs: {envelope, isoflop,
    chinchilla, compute} (`compute`: "flops column" or "6ND", the FLOP count every one used).
    Approach 3 is skipped (with `chinchilla_error`) where the five-parameter fit is not possible."""
    out = {"envelope": lower_envelope(params, tokens, loss, flops=flops, budgets=budgets),
           "isoflop": fit_isoflop(params, tokens, loss, flops=flops, budgets=budgets, n_boot=n_boot, seed=seed,
                                  level=level),
           "compute": "flops column" if flops is not None else "6ND"}
    try:
        out["chinchilla"] = chinchilla_approach(params, tokens, loss, flops=flops, budgets=budgets, n_boot=n_boot,
                                                seed=seed, level=level, grid=grid)
    except ValueError as err:
        out["chinchilla_error"] = str(err)
    return out


__all__ = ["chinchilla_approach", "compare_approaches", "lower_envelope"]
