"""PNG plots of scaling fits: loss vs parameters, IsoFLOP profiles, the three approaches side by side, the frontier,
learning-rate sweeps."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter

from scaling_jax.scaling.chinchilla import chinchilla_loss
from scaling_jax.scaling.isoflop import budget_labels, group_budgets, run_compute
from scaling_jax.scaling.optimal import chinchilla_optimal, isoflop_optimal

# Figures are built on the Agg canvas directly (no pyplot): no global backend or figure state.
_CMAP = "viridis"


def _figure() -> tuple[Figure, object]:
    fig = Figure(figsize=(7, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def _colors(n: int):
    cmap = colormaps[_CMAP]
    return [cmap(v) for v in np.linspace(0.0, 0.9, max(n, 1))]


def _token_groups(tokens, max_groups: int) -> np.ndarray:
    """Labels of points with (nearly) the same token count; too many distinct counts are binned
    into max_groups equal-width bins of log tokens."""
    labels = group_budgets(tokens)
    if labels.max() + 1 <= max_groups:
        return labels
    log_t = np.log10(tokens)
    edges = np.linspace(log_t.min(), log_t.max(), max_groups + 1)
    return np.clip(np.digitize(log_t, edges[1:-1]), 0, max_groups - 1)


def plot_loss_vs_params(params, tokens, loss, fit: dict, path, *, max_curves: int = 6) -> Path:
    """Log-log loss against parameters, points coloured by token budget, with the Chinchilla fit
    L(N, D) drawn at each budget's (geometric mean) token count."""
    n, d, y = (np.asarray(v, float) for v in (params, tokens, loss))
    fig, ax = _figure()
    labels = _token_groups(d, max_curves)
    groups = np.unique(labels)
    n_line = np.logspace(np.log10(n.min()) - 0.3, np.log10(n.max()) + 0.3, 200)
    for color, label in zip(_colors(groups.size), groups):
        members = labels == label
        d_mid = float(np.exp(np.mean(np.log(d[members]))))
        ax.scatter(n[members], y[members], color=color, s=18, zorder=3)
        ax.plot(n_line, chinchilla_loss(n_line, d_mid, fit), color=color, lw=1.5,
                label=f"D ≈ {d_mid:.2g} tokens")
    ax.axhline(fit["E"], color="0.5", ls=":", lw=1, label=f"E = {fit['E']:.3g}")
    ax.set(xscale="log", yscale="log", xlabel="parameters N", ylabel="loss",
           title=f"Chinchilla fit: E={fit['E']:.3g}, A={fit['A']:.3g}, B={fit['B']:.3g}, "
                 f"α={fit['alpha']:.3f}, β={fit['beta']:.3f}")
    plain = FuncFormatter(lambda v, _: f"{v:g}")  # 3, not 3x10^0, on a narrow log axis
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_one_variable(x, loss, fits: list[dict], variable: str, path) -> Path:
    """Log-log loss against N (or D) with one-variable fits (fit_power_law / fit_kaplan results
    in that variable) drawn over the points."""
    from scaling_jax.scaling.powerlaw import KAPLAN_LAWS, POWER_LAWS

    laws = {law.name: law for law in (*POWER_LAWS.values(), *KAPLAN_LAWS.values())}
    x, y = np.asarray(x, float), np.asarray(loss, float)
    fig, ax = _figure()
    ax.scatter(x, y, color="0.3", s=18, zorder=3, label="runs")
    x_line = np.logspace(np.log10(x.min()) - 0.3, np.log10(x.max()) + 0.5, 200)
    for color, fit in zip(("C0", "C1"), fits):
        law = laws[fit["law"]]
        shown = ", ".join(f"{k}={fit[k]:.3g}" for k in law.param_names)
        ax.plot(x_line, law.predict(fit, x_line), color=color, lw=1.5, label=f"{law.name}: {shown}")
    label = {"N": "parameters N", "D": "tokens D"}[variable]
    ax.set(xscale="log", yscale="log", xlabel=label, ylabel="loss", title=f"Loss against {label}")
    plain = FuncFormatter(lambda v, _: f"{v:g}")
    ax.yaxis.set_major_formatter(plain)
    ax.yaxis.set_minor_formatter(plain)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def _draw_profiles(ax, n, y, labels, fit: dict) -> None:
    """Each budget's points, parabola in ln N and vertex (★) on `ax`."""
    for color, budget in zip(_colors(len(fit["budgets"])), fit["budgets"]):
        members = labels == budget["label"]
        ax.scatter(n[members], y[members], color=color, s=18, zorder=3)
        x_opt = np.log(budget["N_opt"])
        x = np.linspace(np.log(n[members]).min() - 0.2, np.log(n[members]).max() + 0.2, 100)
        ax.plot(np.exp(x), budget["loss_opt"] + budget["curvature"] * (x - x_opt) ** 2,
                color=color, lw=1.5, label=f"C = {budget['C']:.2g} FLOPs")
        ax.scatter([budget["N_opt"]], [budget["loss_opt"]], color=color, marker="*", s=160,
                   edgecolor="black", zorder=4)


def plot_isoflop(params, tokens, loss, fit: dict, path, *, flops=None, budgets=None) -> Path:
    """Loss against parameters per compute budget, each with its parabola in ln N and vertex.
    Points are grouped as the fit grouped them (`flops`, `budgets` as given to fit_isoflop)."""
    n, d, y = (np.asarray(v, float) for v in (params, tokens, loss))
    labels = budget_labels(run_compute(n, d, flops), budgets)
    fig, ax = _figure()
    _draw_profiles(ax, n, y, labels, fit)
    ax.set(xscale="log", xlabel="parameters N", ylabel="loss",
           title=f"IsoFLOP profiles (★ minima): N_opt ∝ C^{fit['a']:.3f}, "
                 f"D_opt ∝ C^{fit['b']:.3f}")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def _with_ci(value: float, ci: dict | None, key: str) -> str:
    if ci and key in ci and np.all(np.isfinite(ci[key])):
        return f"{value:.3f} [{ci[key][0]:.3f}, {ci[key][1]:.3f}]"
    return f"{value:.3f}"


def plot_approaches(params, tokens, loss, result: dict, path, *, flops=None, budgets=None,
                    level: float = 0.95) -> Path:
    """Two panels from approaches.compare_approaches: left, the IsoFLOP profiles with their
    parabolas and minima (★) and the lower envelope's best runs (◆, approach 1); right, N_opt
    against C by all three approaches with their fitted exponents (and intervals), approach 2's
    per-budget intervals as error bars."""
    n, d, y = (np.asarray(v, float) for v in (params, tokens, loss))
    labels = budget_labels(run_compute(n, d, flops), budgets)
    fig = Figure(figsize=(13, 5), dpi=110, layout="constrained")
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    iso, env, chin = result["isoflop"], result["envelope"], result.get("chinchilla")
    _draw_profiles(left, n, y, labels, iso)
    left.plot([b["N_opt"] for b in env["budgets"]], [b["loss"] for b in env["budgets"]], color="0.2", ls=":",
              marker="D", ms=6, label="lowest run per budget (approach 1)")
    left.set(xscale="log", xlabel="non-embedding parameters N", ylabel="loss",
             title="IsoFLOP profiles: parabolas in ln N, ★ minima")
    left.legend(fontsize=8)
    left.grid(True, which="both", alpha=0.3)

    c_all = np.array([b["C"] for b in iso["budgets"]])
    c_line = np.logspace(np.log10(c_all.min()) - 0.3, np.log10(c_all.max()) + 0.3, 50)
    rows = [("approach 1: envelope", env, "C2", "D"), ("approach 2: parabolas", iso, "C1", "*")]
    if chin is not None:
        rows.append(("approach 3: L(N, D) fit", chin, "C0", "o"))
    for j, (name, fit, color, marker) in enumerate(rows):
        c = np.array([b["C"] for b in fit["budgets"]]) * 10 ** (0.04 * (j - 1))  # dodged apart
        n_opt = np.array([b["N_opt"] for b in fit["budgets"]])
        ci = [b.get("ci", {}).get("N_opt") for b in fit["budgets"]]
        if all(v is not None and np.all(np.isfinite(v)) for v in ci):
            err = np.abs(np.array(ci).T - n_opt[None])
            right.errorbar(c, n_opt, yerr=err, color=color, fmt=marker, ms=8, capsize=3, zorder=3)
        else:
            right.scatter(c, n_opt, color=color, marker=marker, s=60, zorder=3)
        if "a" in fit:
            right.plot(c_line, fit["N_coef"] * c_line ** fit["a"], color=color, lw=1.5,
                       label=f"{name}: N_opt ∝ C^{_with_ci(fit['a'], fit.get('ci'), 'a')}")
    right.set(xscale="log", yscale="log", xlabel=f"training compute C (FLOPs, {result.get('compute', '6ND')})",
              ylabel="compute-optimal N", title=f"N_opt against C ({level:.0%} bootstrap intervals)")
    right.legend(fontsize=8)
    right.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_frontier(fit: dict | None, path, *, compute_range, samples: dict | None = None,
                  isoflop_fit: dict | None = None, data_compute=None, level: float = 0.95,
                  extrapolate_decades: float = 3.0) -> Path:
    """N_opt(C) from the Chinchilla fit, with the bootstrap band (`samples`) at `level`, out to
    extrapolate_decades beyond the data; IsoFLOP vertices and their power law if given."""
    lo, hi = (float(c) for c in compute_range)
    c = np.logspace(np.log10(lo), np.log10(hi) + extrapolate_decades, 200)
    fig, ax = _figure()
    if fit is not None:
        ax.plot(c, chinchilla_optimal(fit, c)["N_opt"], color="C0", lw=2,
                label="Chinchilla fit (approach 3)")
        if samples is not None:
            per_refit = chinchilla_optimal({k: np.asarray(samples[k])[:, None]
                                            for k in ("E", "A", "B", "alpha", "beta")}, c)
            band = np.nanquantile(per_refit["N_opt"], [(1 - level) / 2, (1 + level) / 2], axis=0)
            ax.fill_between(c, band[0], band[1], color="C0", alpha=0.25,
                            label=f"{level:.0%} bootstrap band")
    if isoflop_fit is not None:
        ax.plot(c, isoflop_optimal(isoflop_fit, c)["N_opt"], color="C1", ls="--", lw=1.5,
                label=f"IsoFLOP fit, N_opt ∝ C^{isoflop_fit['a']:.3f}")
        ax.scatter([b["C"] for b in isoflop_fit["budgets"]],
                   [b["N_opt"] for b in isoflop_fit["budgets"]], color="C1", marker="*", s=120,
                   zorder=4, label="IsoFLOP minima")
    if data_compute is not None:
        ax.axvspan(np.min(data_compute), np.max(data_compute), color="0.92", zorder=0,
                   label="compute range of the data")
    ax.set(xscale="log", yscale="log", xlabel="training compute C = 6ND (FLOPs)",
           ylabel="compute-optimal parameters N_opt", title="Compute-optimal frontier")
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)


def plot_lr_sweep(rows: list[dict], path, best: list[dict], *, title: str = "") -> Path:
    """Loss against learning rate (log) per width (one line per group of `best`, from
    lr_sweep.best_learning_rates), the best rate of each marked with a star."""
    fig, ax = _figure()
    for color, b in zip(_colors(len(best)), best):
        label = ", ".join(f"{k}={b[k]}" for k in b if k not in ("lrs", "losses", "best_lr", "best_loss",
                                                                 "best_index", "at_edge") and b[k] != "")
        losses = np.asarray(b["losses"], float)
        ax.plot(b["lrs"], losses, color=color, marker="o", ms=4, lw=1.5, label=label)
        ax.scatter([b["best_lr"]], [b["best_loss"]], color=color, marker="*", s=180, edgecolor="black", zorder=4)
    ax.set(xscale="log", xlabel="learning rate (base rate under muP)", ylabel="held-out loss",
           title=title or "Learning-rate sweep per width (★ best)")
    finite = [v for b in best for v in b["losses"] if np.isfinite(v)]
    if finite:  # diverged runs would stretch the axis: show up to a little above the worst finite best
        top = min(max(finite), min(finite) + 3 * (max(b["best_loss"] for b in best) - min(finite) + 0.05))
        ax.set_ylim(min(finite) - 0.02, top)
    ax.legend(fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    return _save(fig, path)
