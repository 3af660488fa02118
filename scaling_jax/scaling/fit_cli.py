"""The `scaling-jax fit RESULTS.csv` verb: fit laws to a results CSV, print a table, write JSON and plots."""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np

LAWS = ("chinchilla", "power", "kaplan", "isoflop")
DESCRIPTION = """\
Fit scaling laws to a results CSV with columns params, tokens, loss (other columns are ignored,
except an optional `budget` column that labels IsoFLOP groups and an optional `flops` column, each
run's training FLOPs as `scaling-jax sweep` counts them; without it C = 6 N D).

laws:
  chinchilla  L(N, D) = E + A/N^alpha + B/D^beta (Hoffmann et al. 2022, approach 3: Huber loss in
              log space, L-BFGS from a grid of starts)
  power       L = E + A/N^alpha and L = E + B/D^beta, each on the frontier: for every distinct N
              (or D) the lowest loss reached; a variable with too few distinct values is skipped
  kaplan      L = (N_c/N)^alpha_N and (D_c/D)^alpha_D (Kaplan et al. 2020), on the same frontier
  isoflop     per compute budget C a parabola in log N; N_opt ∝ C^a, D_opt ∝ C^b
  all         every law above; one that cannot be fitted is reported and skipped
  approaches  Hoffmann et al.'s approaches 1 (lower envelope), 2 (isoflop) and 3 (chinchilla) on the
              same runs, N_opt against C side by side (approaches.json, approaches.png)
"""


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("results", metavar="RESULTS.csv", help="CSV with params, tokens, loss")
    parser.add_argument("--law", choices=(*LAWS, "all", "approaches"), default="chinchilla",
                        help="which law to fit (default: chinchilla)")
    parser.add_argument("--out", metavar="FIT.json", help="write the fits as JSON here")
    parser.add_argument("--bootstrap", metavar="N", type=int, default=200,
                        help="bootstrap resamples for confidence intervals (0: none; default 200)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    parser.add_argument("--level", type=float, default=0.95,
                        help="confidence level of the intervals (default 0.95)")
    parser.add_argument("--budget", metavar="C", type=float, action="append", default=[],
                        help="compute budget in FLOPs for the compute-optimal N, D and loss "
                             "(repeatable; needs chinchilla or isoflop)")
    parser.add_argument("--grid", choices=("paper", "coarse"), default="paper",
                        help="Chinchilla start grid: the paper's 5400 starts or 243 (default paper)")
    parser.add_argument("--plot-dir", metavar="DIR", help="write PNG plots into DIR")
    return parser


def make_parser(prog: str = "scaling-jax fit") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=DESCRIPTION,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def _frontier(x, loss) -> tuple[np.ndarray, np.ndarray]:
    """For each distinct x, the lowest loss: the best-trained run of that size (or data)."""
    values, inverse = np.unique(x, return_inverse=True)
    best = np.full(values.size, np.inf)
    np.minimum.at(best, inverse, loss)
    return values, best


def _fit_one(law: str, data: dict, args) -> tuple[dict, dict]:
    """({fit name: fit}, {fit name: why skipped}) for one --law choice."""
    from scaling_jax.scaling import chinchilla, isoflop, powerlaw

    n, d, y = data["params"], data["tokens"], data["loss"]
    boot = {"n_boot": args.bootstrap, "seed": args.seed, "level": args.level}
    if law == "chinchilla":
        grid = chinchilla.chinchilla_grids()[args.grid]
        return {"chinchilla": chinchilla.fit_chinchilla(n, d, y, grid=grid, **boot)}, {}
    if law == "isoflop":
        return {"isoflop": isoflop.fit_isoflop(n, d, y, flops=data.get("flops"), budgets=data.get("budget"),
                                               **boot)}, {}
    if law == "approaches":
        from scaling_jax.scaling.approaches import compare_approaches
        return {"approaches": compare_approaches(n, d, y, flops=data.get("flops"), budgets=data.get("budget"),
                                                 grid=args.grid, **boot)}, {}
    laws = powerlaw.POWER_LAWS if law == "power" else powerlaw.KAPLAN_LAWS
    fits, skipped = {}, {}
    for variable, x in (("N", n), ("D", d)):
        xs, ys = _frontier(x, y)
        name = laws[variable].name
        if xs.size < laws[variable].n_params:  # e.g. a width sweep at one token count: no L(D)
            skipped[name] = (f"needs {laws[variable].n_params} distinct {variable} values, "
                             f"found {xs.size}")
            continue
        fit = powerlaw.fit_power_law if law == "power" else powerlaw.fit_kaplan
        fits[name] = fit(xs, ys, variable=variable, **boot)
    if not fits:
        raise ValueError(f"{law} law: " + "; ".join(f"{k} {v}" for k, v in skipped.items()))
    return fits, skipped


def _optimal(fits: dict, budgets: list[float], level: float) -> list[dict]:
    from scaling_jax.scaling.optimal import (chinchilla_optimal, chinchilla_optimal_ci,
                                             isoflop_optimal)

    rows = []
    for c in budgets:
        if "chinchilla" in fits:
            row = {"law": "chinchilla", **chinchilla_optimal(fits["chinchilla"], c)}
            if "samples" in fits["chinchilla"]:
                row["ci"] = chinchilla_optimal_ci(fits["chinchilla"]["samples"], c, level)
            rows.append(row)
        if "isoflop" in fits:
            rows.append({"law": "isoflop", **isoflop_optimal(fits["isoflop"], c)})
    return rows


def _plain(value):
    """JSON-ready: numpy scalars/arrays to Python, non-finite floats to null."""
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items() if k != "samples"}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in value]
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    return value


def approaches_table(result: dict, level: float = 0.95) -> list[str]:
    """Text lines: per budget the N_opt of each approach, then each approach's exponent a."""
    names = {"envelope": "1 envelope", "isoflop": "2 parabolas", "chinchilla": "3 L(N,D) fit"}
    have = [k for k in names if k in result]
    lines = [f"approaches (compute: {result['compute']})",
             f"  {'C (FLOPs)':>10}" + "".join(f"  {names[k] + ' N_opt':>30}" for k in have)]
    for i, b in enumerate(result["isoflop"]["budgets"]):
        cells = []
        for k in have:
            rows = result[k]["budgets"]
            row = min(rows, key=lambda r: abs(np.log(r["C"] / b["C"])))
            ci = row.get("ci", {}).get("N_opt")
            text = f"{row['N_opt']:.4g}" + (f" [{ci[0]:.3g}, {ci[1]:.3g}]" if ci else "")
            cells.append(f"  {text:>30}")
        inside = "" if b["inside"] else "  (parabola minimum outside the sampled sizes)"
        lines.append(f"  {b['C']:>10.3g}" + "".join(cells) + inside)
    for k in have:
        fit = result[k]
        if "a" not in fit:
            continue
        ci = fit.get("ci", {}).get("a")
        interval = f"  {level:.0%} interval [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else ""
        lines.append(f"  approach {names[k]}: N_opt ∝ C^{fit['a']:.3f}{interval}")
    if "chinchilla_error" in result:
        lines.append(f"  approach 3 skipped: {result['chinchilla_error']}")
    env = result["envelope"]
    lines.append(f"  envelope loss falls with compute: {'yes' if env['falls'] else 'NO'} "
                 "(" + ", ".join(f"{b['loss']:.4f}" for b in env["budgets"]) + ")")
    return lines


def _table(fits: dict, errors: dict, optimal: list[dict], level: float) -> str:
    lines = []
    for name, fit in fits.items():
        if name == "approaches":
            lines += approaches_table(fit, level) + [""]
            continue
        header = f"{name}  ({fit['n_points']} points"
        header += f", objective {fit['objective']:.6g})" if "objective" in fit else ")"
        lines.append(header)
        ci = fit.get("ci", {})
        keys = ("a", "b", "N_coef", "D_coef") if name == "isoflop" else _param_names(name)
        ci_head = f"  {level:.0%} interval" if ci else ""
        lines.append(f"  {'param':<10}{'value':>14}{ci_head}")
        for key in keys:
            interval = f"  [{ci[key][0]:.5g}, {ci[key][1]:.5g}]" if key in ci else ""
            lines.append(f"  {key:<10}{fit[key]:>14.6g}{interval}")
        if name == "isoflop":
            for b in fit["budgets"]:
                note = "" if b["inside"] else "  (vertex outside the sampled sizes)"
                lines.append(f"    C={b['C']:.3g}: N_opt={b['N_opt']:.4g} D_opt={b['D_opt']:.4g} "
                             f"loss={b['loss_opt']:.4f}{note}")
        lines.append("")
    for name, message in errors.items():
        lines += [f"{name}  skipped: {message}", ""]
    for row in optimal:
        ci = row.get("ci", {})

        def show(key):
            interval = f" [{ci[key][0]:.4g}, {ci[key][1]:.4g}]" if key in ci else ""
            return f"{key}={row[key]:.4g}{interval}"

        parts = [show("N_opt"), show("D_opt")] + ([show("loss")] if "loss" in row else [])
        lines.append(f"optimal at C={row['budget']:.3g} ({row['law']}): " + "  ".join(parts))
    return "\n".join(lines).rstrip() + "\n"


def _param_names(name: str) -> tuple[str, ...]:
    from scaling_jax.scaling.chinchilla import CHINCHILLA
    from scaling_jax.scaling.powerlaw import KAPLAN_LAWS, POWER_LAWS

    laws = {CHINCHILLA.name: CHINCHILLA, **{law.name: law for law in POWER_LAWS.values()},
            **{law.name: law for law in KAPLAN_LAWS.values()}}
    return laws[name].param_names


def _plots(plot_dir: Path, data: dict, fits: dict, level: float) -> list[Path]:
    from scaling_jax.scaling import plots
    from scaling_jax.scaling.isoflop import run_compute

    n, d, y = data["params"], data["tokens"], data["loss"]
    flops, budgets = data.get("flops"), data.get("budget")
    compute = run_compute(n, d, flops)
    written = []
    if "chinchilla" in fits:
        written.append(plots.plot_loss_vs_params(n, d, y, fits["chinchilla"],
                                                 plot_dir / "loss_vs_params.png"))
    for variable, x in (("N", n), ("D", d)):
        one_variable = [fits[k] for k in (f"power_{variable}", f"kaplan_{variable}") if k in fits]
        if one_variable:
            written.append(plots.plot_one_variable(x, y, one_variable, variable,
                                                   plot_dir / f"loss_vs_{variable}.png"))
    if "isoflop" in fits:
        written.append(plots.plot_isoflop(n, d, y, fits["isoflop"], plot_dir / "isoflop.png", flops=flops,
                                          budgets=budgets))
    if "approaches" in fits:
        written.append(plots.plot_approaches(n, d, y, fits["approaches"], plot_dir / "approaches.png",
                                             flops=flops, budgets=budgets, level=level))
    if "chinchilla" in fits or "isoflop" in fits:
        written.append(plots.plot_frontier(
            fits.get("chinchilla"), plot_dir / "frontier.png",
            compute_range=(compute.min(), compute.max()),
            samples=fits.get("chinchilla", {}).get("samples"), isoflop_fit=fits.get("isoflop"),
            data_compute=compute, level=level))
    return written


def run(args: argparse.Namespace) -> int:
    """Runs the verb on parsed arguments; returns the exit status (errors go to stderr)."""
    from scaling_jax.scaling.results import read_results

    try:
        if args.bootstrap < 0:
            raise ValueError(f"--bootstrap must be >= 0, got {args.bootstrap}")
        if not 0 < args.level < 1:
            raise ValueError(f"--level must be between 0 and 1, got {args.level}")
        data = read_results(args.results)
        laws = LAWS if args.law == "all" else (args.law,)
        fits, errors = {}, {}
        for law in laws:
            try:
                new_fits, skipped = _fit_one(law, data, args)
            except ValueError as err:
                if args.law != "all":
                    raise
                errors[law] = str(err)
                continue
            fits.update(new_fits)
            errors.update(skipped)
        if args.budget and not ({"chinchilla", "isoflop"} & fits.keys()):
            raise ValueError("--budget needs a chinchilla or isoflop fit (--law chinchilla, "
                             "isoflop or all)")
        optimal = _optimal(fits, args.budget, args.level)
        print(_table(fits, errors, optimal, args.level), end="")
        report = {"results": str(args.results), "n_points": int(data["loss"].size)}
        if "chinchilla" in fits:  # the contract: Chinchilla's parameters at the top level
            chin = fits["chinchilla"]
            report.update({k: chin[k] for k in ("E", "A", "B", "alpha", "beta", "ci") if k in chin})
        report.update({"laws": fits, "skipped": errors, "optimal": optimal})
        if args.out:
            out = Path(args.out)
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(_plain(report), indent=2) + "\n")
            print(f"wrote {out}")
        if args.plot_dir:
            for path in _plots(Path(args.plot_dir), data, fits, args.level):
                print(f"wrote {path}")
    except ValueError as err:
        print(f"scaling-jax fit: error: {err}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    """`scaling-jax fit ...`: parses argv (default sys.argv[1:]) and runs; returns the exit status
    (0 ok, 1 a fitting or input error, 2 bad arguments; --help prints and returns 0)."""
    try:
        args = make_parser().parse_args(argv)
    except SystemExit as stop:  # argparse exits on --help and on bad arguments
        return int(stop.code or 0)
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
