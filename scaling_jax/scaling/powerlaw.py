"""One-variable laws in N or D: saturating L = E + A/x^alpha, and Kaplan's L = (x_c/x)^alpha_x."""
from __future__ import annotations

import numpy as np

from scaling_jax.scaling.fitting import fit_law
from scaling_jax.scaling.laws import Law, logsumexp_terms, product_grid

_INPUT = {"N": "params", "D": "tokens"}
# Chinchilla's letters for each variable: E + A/N^alpha, E + B/D^beta.
_SATURATING_NAMES = {"N": ("E", "A", "alpha"), "D": ("E", "B", "beta")}


def _check_variable(variable: str) -> None:
    if variable not in _INPUT:
        raise ValueError(f"variable must be 'N' (params) or 'D' (tokens), got {variable!r}")


def power_law_grid(a=range(0, 30, 5), e=np.arange(-1.0, 2.0, 0.5),
                   alpha=np.arange(0.0, 2.5, 0.5)) -> np.ndarray:
    """Starting points theta = (a, e, alpha): the Chinchilla grid's values, 180 starts."""
    return product_grid(a=a, e=e, alpha=alpha)


def kaplan_grid(k=(0.0, 2.0, 5.0, 10.0), alpha=(0.05, 0.2, 0.5)) -> np.ndarray:
    """Starting points theta = (k, alpha), k = alpha log x_c. The objective is convex in theta
    (Huber of a linear function), so any start reaches the optimum; a few guard against stalls."""
    return product_grid(k=k, alpha=alpha)


def _saturating_log_predict(theta_P, logx_KxN):
    a, e, alpha = theta_P
    return logsumexp_terms(a - alpha * logx_KxN[0], e)


def _kaplan_log_predict(theta_P, logx_KxN):
    k, alpha = theta_P  # log L = alpha (log x_c - log x) = k - alpha log x
    return k - alpha * logx_KxN[0]


def _saturating_law(variable: str) -> Law:
    e_name, coef_name, exp_name = _SATURATING_NAMES[variable]

    def to_params(theta) -> dict:
        a, e, alpha = (float(t) for t in theta)
        return {e_name: float(np.exp(e)), coef_name: float(np.exp(a)), exp_name: alpha,
                "a": a, "e": e}

    def predict(fit, x):
        return fit[e_name] + fit[coef_name] / np.asarray(x, float) ** fit[exp_name]

    return Law(name=f"power_{variable}", inputs=(_INPUT[variable],),
               theta_names=("a", "e", "alpha"), param_names=(e_name, coef_name, exp_name),
               log_predict=_saturating_log_predict, to_params=to_params, predict=predict,
               default_grid=power_law_grid)


def _kaplan_law(variable: str) -> Law:
    scale_name, exp_name = f"{variable}_c", f"alpha_{variable}"

    def to_params(theta) -> dict:
        k, alpha = (float(t) for t in theta)
        scale = float(np.exp(k / alpha)) if alpha != 0 else float("inf")
        return {scale_name: scale, exp_name: alpha, "k": k}

    def predict(fit, x):
        return (fit[scale_name] / np.asarray(x, float)) ** fit[exp_name]

    return Law(name=f"kaplan_{variable}", inputs=(_INPUT[variable],), theta_names=("k", "alpha"),
               param_names=(scale_name, exp_name), log_predict=_kaplan_log_predict,
               to_params=to_params, predict=predict, default_grid=kaplan_grid)


POWER_N, POWER_D = _saturating_law("N"), _saturating_law("D")
KAPLAN_N, KAPLAN_D = _kaplan_law("N"), _kaplan_law("D")
POWER_LAWS = {"N": POWER_N, "D": POWER_D}
KAPLAN_LAWS = {"N": KAPLAN_N, "D": KAPLAN_D}


def fit_power_law(x, loss, *, variable: str = "N", grid=None, n_boot: int = 0, seed: int = 0,
                  level: float = 0.95) -> dict:
    """Fits L = E + A/N^alpha (variable "N") or E + B/D^beta ("D") by the Huber objective in log
    space over LSE(a - alpha log x, e), as Chinchilla's fit does; n_boot > 0 adds intervals (`ci`).
    Raises ValueError on bad points."""
    _check_variable(variable)
    return fit_law(POWER_LAWS[variable], (x,), loss, grid=grid, n_boot=n_boot, seed=seed,
                   level=level)


def fit_kaplan(x, loss, *, variable: str = "N", grid=None, n_boot: int = 0, seed: int = 0,
               level: float = 0.95) -> dict:
    """Fits Kaplan et al. (2020) L = (N_c/N)^alpha_N (or (D_c/D)^alpha_D): a Huber-robust line in
    log-log space. Keys `N_c`, `alpha_N` (or `D_c`, `alpha_D`) and `k` = alpha log x_c."""
    _check_variable(variable)
    return fit_law(KAPLAN_LAWS[variable], (x,), loss, grid=grid, n_boot=n_boot, seed=seed,
                   level=level)
