"""IsoFLOP profiles (Hoffmann et al. 2022, approach 2): per budget a parabola in log N, then N_opt ∝ C^a."""
from __future__ import annotations

import numpy as np

from scaling_jax.scaling.bootstrap import bootstrap_function
from scaling_jax.scaling.validate import check_points

MIN_SIZES = 3  # distinct model sizes a parabola needs
MIN_BUDGETS = 2  # budgets a power law in C needs
RESULT_NAMES = ("a", "b", "N_coef", "D_coef")


def training_flops(params, tokens):
    """C = 6 N D: training FLOPs of N parameters on D tokens (Kaplan et al. 2020, eq. 2.1)."""
    return 6.0 * np.asarray(params, float) * np.asarray(tokens, float)


def group_budgets(compute, tol_decades: float = 0.05) -> np.ndarray:
    """Integer labels grouping points whose compute C lies within tol_decades (in log10) of the
    neighbouring point: sweeps set D = C / (6 N) up to rounding, so one budget's points nearly
    share C while budgets differ by far more."""
    log_c = np.log10(np.asarray(compute, float))
    order = np.argsort(log_c)
    starts = np.concatenate([[True], np.diff(log_c[order]) > tol_decades])
    labels = np.empty(log_c.size, dtype=np.int64)
    labels[order] = np.cumsum(starts) - 1
    return labels


def fit_parabola(log_params, loss) -> dict:
    """loss ~ c2 x^2 + c1 x + c0 in x = ln N (least squares); minimum at x* = -c1 / (2 c2).

    Raises ValueError when the parabola opens downward (no minimum)."""
    x, y = np.asarray(log_params, float), np.asarray(loss, float)
    c2, c1, c0 = np.polyfit(x, y, 2)
    if not c2 > 0:
        raise ValueError(f"loss is not convex in log N over N = {np.exp(x.min()):.3g}.."
                         f"{np.exp(x.max()):.3g} (parabola curvature {c2:.3g}): no minimum")
    x_min = -c1 / (2 * c2)
    return {"curvature": float(c2), "N_opt": float(np.exp(x_min)),
            "loss_opt": float(c0 - c1 * c1 / (4 * c2)),
            "inside": bool(x.min() <= x_min <= x.max())}


def _power_in_compute(compute, values) -> tuple[float, float]:
    """(exponent, coefficient) of values = coefficient * C^exponent by least squares in log-log."""
    exponent, log_coef = np.polyfit(np.log(compute), np.log(values), 1)
    return float(exponent), float(np.exp(log_coef))


def _fit_groups(n, d, loss, labels) -> dict:
    per_budget, skipped = [], []
    for label in np.unique(labels):
        members = labels == label
        budget = float(np.exp(np.mean(np.log(training_flops(n[members], d[members])))))
        if np.unique(n[members]).size < MIN_SIZES:
            skipped.append({"C": budget, "n_points": int(members.sum()),
                            "reason": f"fewer than {MIN_SIZES} model sizes"})
            continue
        try:
            vertex = fit_parabola(np.log(n[members]), loss[members])
        except ValueError as err:
            raise ValueError(f"IsoFLOP budget C={budget:.3g}: {err}") from None
        per_budget.append({"C": budget, **vertex, "D_opt": budget / (6 * vertex["N_opt"]),
                           "n_points": int(members.sum())})
    if len(per_budget) < MIN_BUDGETS:
        raise ValueError(f"IsoFLOP needs at least {MIN_BUDGETS} compute budgets with "
                         f"{MIN_SIZES}+ model sizes each; found {len(per_budget)} "
                         f"(budgets C = 6 N D grouped within a factor "
                         f"{10 ** 0.05:.2f}, or give budget labels)")
    c = np.array([row["C"] for row in per_budget])
    a, n_coef = _power_in_compute(c, [row["N_opt"] for row in per_budget])
    b, d_coef = _power_in_compute(c, [row["D_opt"] for row in per_budget])
    return {"a": a, "b": b, "N_coef": n_coef, "D_coef": d_coef, "budgets": per_budget,
            "skipped": skipped}


def fit_isoflop(params, tokens, loss, *, budgets=None, tol_decades: float = 0.05,
                n_boot: int = 0, seed: int = 0, level: float = 0.95) -> dict:
    """N_opt(C) = N_coef C^a and D_opt(C) = D_coef C^b from IsoFLOP profiles.

    Points are grouped into compute budgets by C = 6 N D (group_budgets), or by the given
    `budgets` labels (one per point). In each budget loss is fitted by a parabola in ln N whose
    vertex gives N_opt(C) and D_opt = C / (6 N_opt); a and b are then least-squares slopes in
    log-log (so a + b = 1 up to rounding). `budgets` in the result lists every vertex (`inside`:
    whether it lies within the sampled sizes). n_boot > 0 adds percentile intervals `ci` for a, b,
    N_coef, D_coef from resampling points within each budget.
    """
    # How many points it needs depends on how they group into budgets: _fit_groups says.
    arrays = check_points({"params": params, "tokens": tokens, "loss": loss})
    n, d, y = arrays["params"], arrays["tokens"], arrays["loss"]
    if budgets is None:
        labels = group_budgets(training_flops(n, d), tol_decades)
    else:
        labels = np.unique(np.asarray(budgets), return_inverse=True)[1].reshape(-1)
        if labels.size != n.size:
            raise ValueError(f"budgets has {labels.size} labels for {n.size} points")
    fit = {"law": "isoflop", **_fit_groups(n, d, y, labels), "n_points": int(n.size)}
    if n_boot:
        fit.update(bootstrap_function(lambda idx: _fit_groups(n[idx], d[idx], y[idx], labels[idx]),
                                      n.size, RESULT_NAMES, n_boot=n_boot, seed=seed, level=level,
                                      strata=labels))
    return fit
