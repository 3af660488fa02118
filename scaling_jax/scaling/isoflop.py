"""IsoFLOP profiles (Hoffmann et al. 2022, approach 2): per budget a parabola in log N, then N_opt ∝ C^a."""
from __future__ import annotations

import numpy as np

from scaling_jax.scaling.bootstrap import bootstrap_function
from scaling_jax.scaling.validate import check_points

MIN_SIZES = 3  # distinct model sizes a parabola needs
MIN_BUDGETS = 2  # budgets a power law in C needs
RESULT_NAMES = ("a", "b", "N_coef", "D_coef")
BOOT_METHODS = ("residual", "pairs")


def training_flops(params, tokens):
    """C = 6 N D: training FLOPs of N parameters on D tokens (Kaplan et al. 2020, eq. 2.1)."""
    return 6.0 * np.asarray(params, float) * np.asarray(tokens, float)


def run_compute(params, tokens, flops=None) -> np.ndarray:
    """Each run's training FLOPs: the results' `flops` column when given (the sweep's own count,
    `scaling_jax.flops.train_flops_per_token`, which includes the LM head and attention), else the
    fallback C = 6 N D (`training_flops`)."""
    if flops is None:
        return training_flops(params, tokens)
    return check_points({"flops": flops})["flops"]


def flops_per_token_model(params, compute, tokens):
    """FLOPs per training token as a function of N, read off the runs themselves: log(C / D)
    interpolated linearly in log N between the sizes run (extended along the end segments; one
    size: proportional to N). Exact at every size run; turns a vertex N_opt into
    D_opt = C / fpt(N_opt) under whatever count produced C (for C = 6 N D it is 6 N)."""
    log_n = np.log(np.asarray(params, float))
    log_fpt = np.log(np.asarray(compute, float) / np.asarray(tokens, float))
    xs, inverse = np.unique(log_n, return_inverse=True)
    ys = np.bincount(inverse, weights=log_fpt) / np.bincount(inverse)

    def fpt(n):
        x = np.log(np.asarray(n, float))
        if xs.size == 1:
            return np.exp(ys[0] + x - xs[0])
        inside = np.interp(x, xs, ys)
        lo_slope = (ys[1] - ys[0]) / (xs[1] - xs[0])
        hi_slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        out = np.where(x < xs[0], ys[0] + lo_slope * (x - xs[0]),
                       np.where(x > xs[-1], ys[-1] + hi_slope * (x - xs[-1]), inside))
        return np.exp(out)

    return fpt


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


def budget_labels(compute, budgets=None, tol_decades: float = 0.05) -> np.ndarray:
    """Integer budget labels: from `budgets` (one label per point, e.g. the sweep's `budget` column)
    when given, else by grouping compute (`group_budgets`)."""
    if budgets is None:
        return group_budgets(compute, tol_decades)
    labels = np.unique(np.asarray(budgets), return_inverse=True)[1].reshape(-1)
    if labels.size != np.size(compute):
        raise ValueError(f"budgets has {labels.size} labels for {np.size(compute)} points")
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
            "inside": bool(x.min() <= x_min <= x.max()),
            "N_min": float(np.exp(x.min())), "N_max": float(np.exp(x.max()))}


def power_in_compute(compute, values) -> tuple[float, float]:
    """(exponent, coefficient) of values = coefficient * C^exponent by least squares in log-log."""
    exponent, log_coef = np.polyfit(np.log(compute), np.log(values), 1)
    return float(exponent), float(np.exp(log_coef))


def _fit_groups(n, compute, loss, labels, fpt) -> dict:
    per_budget, skipped = [], []
    for label in np.unique(labels):
        members = labels == label
        budget = float(np.exp(np.mean(np.log(compute[members]))))
        if np.unique(n[members]).size < MIN_SIZES:
            skipped.append({"C": budget, "n_points": int(members.sum()),
                            "reason": f"fewer than {MIN_SIZES} model sizes"})
            continue
        try:
            vertex = fit_parabola(np.log(n[members]), loss[members])
        except ValueError as err:
            raise ValueError(f"IsoFLOP budget C={budget:.3g}: {err}") from None
        per_budget.append({"C": budget, **vertex, "D_opt": budget / float(fpt(vertex["N_opt"])),
                           "n_points": int(members.sum()), "label": int(label)})
    if len(per_budget) < MIN_BUDGETS:
        raise ValueError(f"IsoFLOP needs at least {MIN_BUDGETS} compute budgets with "
                         f"{MIN_SIZES}+ model sizes each; found {len(per_budget)} "
                         f"(budgets grouped by compute within a factor "
                         f"{10 ** 0.05:.2f}, or give budget labels)")
    c = np.array([row["C"] for row in per_budget])
    a, n_coef = power_in_compute(c, [row["N_opt"] for row in per_budget])
    b, d_coef = power_in_compute(c, [row["D_opt"] for row in per_budget])
    return {"a": a, "b": b, "N_coef": n_coef, "D_coef": d_coef, "budgets": per_budget,
            "skipped": skipped}


def _fitted_values(n, loss, labels, fit) -> tuple[np.ndarray, np.ndarray]:
    """(fitted loss, residual scaled by sqrt(n_b / (n_b - 3))) of every point in a fitted budget;
    points of skipped budgets keep their loss (and a zero residual, never drawn)."""
    fitted, residual = np.asarray(loss, float).copy(), np.zeros(np.size(loss))
    for row in fit["budgets"]:
        members = labels == row["label"]
        x = np.log(n[members])
        coef = np.polyfit(x, loss[members], 2)
        fitted[members] = np.polyval(coef, x)
        dof = max(int(members.sum()) - 3, 1)
        residual[members] = (loss[members] - fitted[members]) * np.sqrt(members.sum() / dof)
    return fitted, residual


def fit_isoflop(params, tokens, loss, *, flops=None, budgets=None, tol_decades: float = 0.05,
                n_boot: int = 0, seed: int = 0, level: float = 0.95, boot_method: str = "residual") -> dict:
    """N_opt(C) = N_coef C^a and D_opt(C) = D_coef C^b from IsoFLOP profiles.

    Each run's compute is its `flops` (the sweep's own count) when given, else C = 6 N D
    (`run_compute`). Points are grouped into budgets by compute (group_budgets), or by the given
    `budgets` labels (one per point). In each budget loss is fitted by a parabola in ln N whose
    vertex gives N_opt(C); D_opt = C / fpt(N_opt) with fpt the runs' FLOPs per token
    (`flops_per_token_model`; 6 N without `flops`, so a + b = 1). a and b are least-squares
    slopes in log-log. `budgets` in the result lists every vertex (`inside`: whether it lies
    within the sampled sizes N_min..N_max).

    n_boot > 0 adds percentile intervals `ci` for a, b, N_coef, D_coef and, per budget, `ci` for
    N_opt, D_opt and loss_opt. `boot_method` "residual" (default) keeps every run and adds to each
    fitted loss a residual drawn from all budgets' parabola residuals (scaled by sqrt(n/(n-3)) for
    the three fitted coefficients), so a five-size profile never loses a size; "pairs" resamples
    runs within each budget. A resample whose parabola has no minimum is left out (`n_ok`).
    """
    arrays = check_points({"params": params, "tokens": tokens, "loss": loss})
    n, d, y = arrays["params"], arrays["tokens"], arrays["loss"]
    if boot_method not in BOOT_METHODS:
        raise ValueError(f"boot_method must be one of {', '.join(BOOT_METHODS)}, got {boot_method!r}")
    compute = run_compute(n, d, flops)
    if compute.size != n.size:
        raise ValueError(f"flops has {compute.size} values for {n.size} points")
    labels = budget_labels(compute, budgets, tol_decades)
    fpt = (lambda x: 6.0 * np.asarray(x, float)) if flops is None else flops_per_token_model(n, compute, d)
    fit = {"law": "isoflop", **_fit_groups(n, compute, y, labels, fpt), "n_points": int(n.size),
           "compute": "flops column" if flops is not None else "6ND"}
    if n_boot:
        k = len(fit["budgets"])
        names = (*RESULT_NAMES, *(f"{q}_{i}" for i in range(k) for q in ("N_opt", "D_opt", "loss_opt")))

        position = {b["label"]: i for i, b in enumerate(fit["budgets"])}

        def flatten(out: dict) -> dict:  # a budget a resample could not fit stays NaN
            row = {name: out[name] for name in RESULT_NAMES}
            for b in out["budgets"]:
                if b["label"] in position:
                    row.update({f"{q}_{position[b['label']]}": b[q] for q in ("N_opt", "D_opt", "loss_opt")})
            return row

        if boot_method == "pairs":
            boot = bootstrap_function(lambda idx: flatten(_fit_groups(n[idx], compute[idx], y[idx], labels[idx],
                                                                      fpt)),
                                      n.size, names, n_boot=n_boot, seed=seed, level=level, strata=labels)
        else:
            fitted, residual = _fitted_values(n, y, labels, fit)
            in_fit = np.isin(labels, [b["label"] for b in fit["budgets"]])
            pool = residual[in_fit]

            def refit(idx):
                y_star = fitted.copy()
                y_star[in_fit] += pool[idx]
                return flatten(_fit_groups(n, compute, y_star, labels, fpt))

            boot = bootstrap_function(refit, pool.size, names, n_boot=n_boot, seed=seed, level=level)
        boot["bootstrap"]["method"] = boot_method
        for i, b in enumerate(fit["budgets"]):
            b["ci"] = {q: boot["ci"].pop(f"{q}_{i}") for q in ("N_opt", "D_opt", "loss_opt")}
        fit.update(boot)
    return fit
