"""Bootstrap confidence intervals: resample points (or residuals on log loss), refit, take percentiles."""
from __future__ import annotations

from typing import Callable

import numpy as np

import jax
import jax.numpy as jnp

from scaling_jax.scaling.laws import Law, pad_points
from scaling_jax.scaling.lbfgs import minimize_many

# "pairs": resample whole runs (points) with replacement; "residual": keep the design (every run's
# N, D) and resample the fit's residuals on log loss, log L*_n = log f(x_n; theta) + r_{i(n)}.
# Measured coverage of both: `scaling-jax bench --coverage` (scaling/coverage.py).
METHODS = ("pairs", "residual")


def resample_indices(n_points: int, n_boot: int, seed: int = 0, strata=None) -> np.ndarray:
    """idx_BxN: n_boot resamples of range(n_points) with replacement, reproducible from `seed`.

    With `strata` (one label per point), each resample draws within every stratum as many points as
    it has, so e.g. every IsoFLOP budget keeps its size.
    """
    rng = np.random.default_rng(seed)
    if strata is None:
        return rng.integers(0, n_points, size=(n_boot, n_points))
    strata = np.asarray(strata)
    idx_BxN = np.empty((n_boot, n_points), dtype=np.int64)
    for label in np.unique(strata):
        members = np.flatnonzero(strata == label)
        idx_BxN[:, members] = members[rng.integers(0, members.size, size=(n_boot, members.size))]
    return idx_BxN


def percentile_interval(samples, level: float = 0.95) -> list[float]:
    """[lo, hi]: the (1 - level)/2 and (1 + level)/2 quantiles of the finite samples."""
    finite = np.asarray(samples, float)
    finite = finite[np.isfinite(finite)]
    if finite.size == 0:
        return [float("nan"), float("nan")]
    lo, hi = np.quantile(finite, [(1 - level) / 2, (1 + level) / 2])
    return [float(lo), float(hi)]


def _check(n_boot: int, level: float) -> None:
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < level < 1:
        raise ValueError(f"level must be between 0 and 1, got {level}")


def _summary(samples: dict[str, np.ndarray], n_boot: int, seed: int, level: float) -> dict:
    n_ok = int(np.sum(np.all([np.isfinite(v) for v in samples.values()], axis=0)))
    return {"ci": {name: percentile_interval(v, level) for name, v in samples.items()},
            "bootstrap": {"n_boot": n_boot, "n_ok": n_ok, "seed": seed, "level": level},
            "samples": samples}


def bootstrap_law(law: Law, logx_KxN, logy_N, theta_P, *, n_boot: int = 200, seed: int = 0,
                  level: float = 0.95, method: str = "pairs") -> dict:
    """Refits `law` on n_boot resamples at once, all in one vmapped L-BFGS.

    `method` "pairs": a resample is the original points weighted by how often each was drawn (every
    refit has the same shapes). "residual": the design stays as it is and each point's log loss is
    the fitted log loss plus a residual drawn with replacement from the fit's residuals (the
    residual bootstrap for regression, Efron & Tibshirani 1993, section 9.5): every refit sees
    every N and D once, so a small sweep never loses its only point at one end of the range.

    Each refit starts from the full-data optimum theta_P (a warm start rather than the whole grid:
    a resample moves the optimum a little, not to another basin). Returns `ci` {param: [lo, hi]}
    (percentile intervals), `bootstrap` {n_boot, n_ok, seed, level, method} and `samples`
    {param: array of n_boot}.
    """
    _check(n_boot, level)
    if method not in METHODS:
        raise ValueError(f"bootstrap method must be one of {', '.join(METHODS)}, got {method!r}")
    n_points = np.shape(logy_N)[0]
    idx_BxN = resample_indices(n_points, n_boot, seed)
    start_BxP = np.tile(np.asarray(theta_P, float), (n_boot, 1))
    if method == "pairs":
        weight_BxN = np.stack([np.bincount(row, minlength=n_points) for row in idx_BxN]).astype(float)
        logx_pad, logy_pad, weight_BxN = pad_points(logx_KxN, logy_N, weight_BxN)
        result = minimize_many(law.objective, start_BxP, (logx_pad, logy_pad), (weight_BxN,))
    else:
        with jax.enable_x64(True):
            fitted_N = np.asarray(law.log_predict(jnp.asarray(theta_P, jnp.float64),
                                                  jnp.asarray(logx_KxN, jnp.float64)))
        residual_N = np.asarray(logy_N, float) - fitted_N
        logy_BxN = fitted_N[None, :] + residual_N[idx_BxN]
        logx_pad, _, weight_BxN = pad_points(logx_KxN, logy_N, np.ones((n_boot, n_points)))
        logy_BxN = np.pad(logy_BxN, ((0, 0), (0, weight_BxN.shape[1] - n_points)))
        result = minimize_many(law.objective, start_BxP, (logx_pad,), (logy_BxN, weight_BxN))
    rows = [law.to_params(theta) if np.isfinite(value) else None
            for theta, value in zip(result.x_SxP, result.value_S)]
    names = law.param_names
    samples = {name: np.array([row[name] if row else np.nan for row in rows]) for name in names}
    out = _summary(samples, n_boot, seed, level)
    out["bootstrap"]["method"] = method
    return out


def bootstrap_function(fit_fn: Callable[[np.ndarray], dict], n_points: int, names, *,
                       n_boot: int = 200, seed: int = 0, level: float = 0.95,
                       strata=None) -> dict:
    """Percentile intervals for fit_fn(indices) -> {name: value} over n_boot resamples (a plain
    loop, for cheap fits such as IsoFLOP's). A resample whose fit raises ValueError counts as
    failed (NaN) and is left out of the intervals; `n_ok` says how many succeeded."""
    _check(n_boot, level)
    samples = {name: np.full(n_boot, np.nan) for name in names}
    for i, idx in enumerate(resample_indices(n_points, n_boot, seed, strata)):
        try:
            out = fit_fn(idx)
        except ValueError:
            continue
        for name in names:
            samples[name][i] = out.get(name, np.nan)
    return _summary(samples, n_boot, seed, level)
