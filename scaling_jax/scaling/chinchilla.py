"""The Chinchilla law L(N, D) = E + A/N^alpha + B/D^beta, fitted by Hoffmann et al. (2022) approach 3."""
from __future__ import annotations

import numpy as np

from scaling_jax.scaling.fitting import fit_law
from scaling_jax.scaling.laws import Law, logsumexp_terms, product_grid


def chinchilla_loss(params, tokens, fit: dict):
    """L(N, D) = E + A / N^alpha + B / D^beta under fitted parameters (numpy, broadcasts)."""
    n, d = np.asarray(params, float), np.asarray(tokens, float)
    return fit["E"] + fit["A"] / n ** fit["alpha"] + fit["B"] / d ** fit["beta"]


def chinchilla_grid(a=range(0, 30, 5), b=range(0, 30, 5), e=np.arange(-1.0, 2.0, 0.5),
                    alpha=np.arange(0.0, 2.5, 0.5), beta=np.arange(0.0, 2.5, 0.5)) -> np.ndarray:
    """Starting points theta = (a, b, e, alpha, beta); the defaults are the paper's grid
    (Hoffmann et al. 2022, appendix D.2, with e up to 1.5): 6 * 6 * 6 * 5 * 5 = 5400 starts."""
    return product_grid(a=a, b=b, e=e, alpha=alpha, beta=beta)


def chinchilla_grids() -> dict[str, np.ndarray]:
    """Named start grids: "paper" (5400 starts) and "coarse" (243: 3 values per coordinate, for
    quick fits and tests; on this kind of data it finds the same optimum)."""
    return {"paper": chinchilla_grid(),
            "coarse": chinchilla_grid(a=(0, 10, 20), b=(0, 10, 20), e=(-1, 0, 1),
                                      alpha=(0, 0.5, 1), beta=(0, 0.5, 1))}


def _log_predict(theta_P, logx_KxN):
    # log L = LSE(a - alpha log N, b - beta log D, e) with A = e^a, B = e^b, E = e^e (eq. 10).
    a, b, e, alpha, beta = theta_P
    return logsumexp_terms(a - alpha * logx_KxN[0], b - beta * logx_KxN[1], e)


def _to_params(theta) -> dict:
    a, b, e, alpha, beta = (float(t) for t in theta)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)),
            "alpha": alpha, "beta": beta, "a": a, "b": b, "e": e}


CHINCHILLA = Law(
    name="chinchilla", inputs=("params", "tokens"), theta_names=("a", "b", "e", "alpha", "beta"),
    param_names=("E", "A", "B", "alpha", "beta"), log_predict=_log_predict, to_params=_to_params,
    predict=lambda fit, n, d: chinchilla_loss(n, d, fit), default_grid=chinchilla_grid)


def fit_chinchilla(params, tokens, loss, *, grid=None, n_boot: int = 0, seed: int = 0,
                   level: float = 0.95, boot_method: str = "pairs") -> dict:
    """Fits E, A, B, alpha, beta to loss(params N, tokens D); see fitting.fit_law for the extras
    (`objective`, `a`, `b`, `e` = log A, log B, log E, ...; with n_boot > 0 bootstrap intervals
    under `ci`, by `boot_method` "pairs" or "residual"). Raises ValueError on bad points."""
    return fit_law(CHINCHILLA, (params, tokens), loss, grid=grid, n_boot=n_boot, seed=seed,
                   level=level, boot_method=boot_method)
