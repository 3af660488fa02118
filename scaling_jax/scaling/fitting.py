"""Fitting one law to points: validate, take logs, L-BFGS from every grid start, the best objective wins."""
from __future__ import annotations

import numpy as np

from scaling_jax.scaling.bootstrap import bootstrap_law
from scaling_jax.scaling.laws import Law, pad_points
from scaling_jax.scaling.lbfgs import minimize_many
from scaling_jax.scaling.validate import check_points

N_POLISH = 16  # best starts re-run without the stall stop, so the winner is fully converged
POLISH_ITERS = 500


def prepare(law: Law, xs, loss) -> tuple[np.ndarray, np.ndarray]:
    """Validated log inputs logx_KxN and log loss logy_N (raises ValueError on bad points)."""
    if len(xs) != len(law.inputs):
        raise ValueError(f"the {law.name} law takes {len(law.inputs)} inputs "
                         f"({', '.join(law.inputs)}), got {len(xs)}")
    arrays = check_points({**dict(zip(law.inputs, xs)), "loss": loss}, law=law.name,
                          n_params=law.n_params)
    logx_KxN = np.log(np.stack([arrays[name] for name in law.inputs]))
    return logx_KxN, np.log(arrays["loss"])


def fit_law(law: Law, xs, loss, *, grid=None, n_boot: int = 0, seed: int = 0,
            level: float = 0.95, boot_method: str = "pairs") -> dict:
    """Fits `law` to loss(xs) by the Huber objective from every row of grid (default: the law's).

    Every start runs to its own stop (see minimize_many); the N_POLISH best are then run on until
    no step lowers the objective. Returns the law's parameters plus `objective` (sum of Huber
    losses at the optimum), `theta` (optimiser coordinates), `n_points`, `n_starts`, `n_best`
    (starts whose first run already came within 1e-9 of the best, relative) and `converged`.
    With n_boot > 0 also `ci` {param: [lo, hi]} at `level`, `bootstrap` and `samples` (see
    bootstrap.bootstrap_law: `boot_method` "pairs" or "residual"; `seed` makes the resamples
    reproducible).
    """
    logx_KxN, logy_N = prepare(law, xs, loss)
    grid_SxP = law.default_grid() if grid is None else np.atleast_2d(np.asarray(grid, float))
    if grid_SxP.shape[1] != law.n_params:
        raise ValueError(f"grid rows must have {law.n_params} values "
                         f"({', '.join(law.theta_names)}), got {grid_SxP.shape[1]}")
    logx_pad, logy_pad, weight_1xN = pad_points(logx_KxN, logy_N, np.ones((1, logy_N.size)))

    def run(starts_SxP, **tolerances):
        weight_SxN = np.repeat(weight_1xN, starts_SxP.shape[0], axis=0)
        return minimize_many(law.objective, starts_SxP, (logx_pad, logy_pad), (weight_SxN,),
                             **tolerances)

    first = run(grid_SxP)
    order = np.argsort(first.value_S)[:N_POLISH]
    # Monotone descent from each start's end point: the polished values are never worse.
    polished = run(first.x_SxP[order], stall_tol=0.0, ftol=0.0, gtol=0.0, max_iter=POLISH_ITERS)
    best = int(np.argmin(polished.value_S))
    value = float(polished.value_S[best])
    if not np.isfinite(value):
        raise ValueError(f"the {law.name} fit failed from every start (objective not finite)")
    theta = polished.x_SxP[best]
    fit = {
        "law": law.name,
        **law.to_params(theta),
        "objective": value,
        "theta": [float(t) for t in theta],
        "n_points": int(logy_N.size),
        "n_starts": int(grid_SxP.shape[0]),
        "n_best": int(np.sum(first.value_S <= value * (1 + 1e-9))),
        # stopped because no step lowers the objective any more, not by the iteration cap
        "converged": bool(polished.n_iter_S[best] < POLISH_ITERS),
    }
    if n_boot:
        fit.update(bootstrap_law(law, logx_KxN, logy_N, theta, n_boot=n_boot, seed=seed,
                                 level=level, method=boot_method))
    return fit
