"""The data-constrained law of Muennighoff et al. (2023): repeated tokens and excess parameters decay in value."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from scaling_jax.scaling.fitting import fit_law
from scaling_jax.scaling.laws import Law, logsumexp_terms, product_grid

# The authors' fit on C4 ("Scaling Data-Constrained Language Models", arXiv 2305.16264, section 5
# and appendix; the `Parametric Fit` section of github.com/huggingface/datablations' README), in
# their coordinates: A = e^a, B = e^b, E = e^e (their fit ties alpha = beta).
MUENNIGHOFF_2023 = {"a": 6.255414, "b": 7.3049974, "e": 0.6254804, "alpha": 0.3526596, "beta": 0.3526596,
                    "R_D_star": 15.387756, "R_N_star": 5.309743}
THETA_NAMES = ("a", "b", "e", "alpha", "beta", "log_R_D_star", "log_R_N_star")
PARAM_NAMES = ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star")


def published_fit() -> dict:
    """MUENNIGHOFF_2023 with E, A, B filled in: the dict `data_constrained_loss` takes."""
    p = MUENNIGHOFF_2023
    return {"E": float(np.exp(p["e"])), "A": float(np.exp(p["a"])), "B": float(np.exp(p["b"])),
            "alpha": p["alpha"], "beta": p["beta"], "R_D_star": p["R_D_star"], "R_N_star": p["R_N_star"]}


def _g(A, B, alpha, beta):
    # Chinchilla's allocation constant (Hoffmann et al. 2022, eq. 4): N_opt = G (C/6)^(beta/(alpha+beta)),
    # D_opt = (C/6)^(alpha/(alpha+beta)) / G.
    return ((alpha * A) / (beta * B)) ** (1.0 / (alpha + beta))


def optimal_params_for_tokens(tokens, fit: dict):
    """N whose compute-optimal token count is `tokens` under the fit's E + A/N^alpha + B/D^beta:
    eliminating C/6 from Chinchilla's allocation, N = G (D G)^(beta/alpha). The paper's U_N: the
    parameters that the unique data can use (more are "excess" parameters, R_N > 0)."""
    g = _g(fit["A"], fit["B"], fit["alpha"], fit["beta"])
    return (np.asarray(tokens, float) * g) ** (fit["beta"] / fit["alpha"]) * g


def effective(unique, repetitions, r_star, xp=np):
    """U + U R* (1 - exp(-R / R*)) (the paper's eq. 5 and 6): the value of U unique items seen
    1 + R times, each repetition worth exponentially less, saturating at U (1 + R*)."""
    return unique + unique * r_star * (1.0 - xp.exp(-repetitions / r_star))


def _parts(params, tokens, unique, fit: dict, xp):
    """(U_N, R_N, U_D, R_D) with R_D = max(D / U_D - 1, 0), U_N = min(N, N_opt(U_D)),
    R_N = max(N / U_N - 1, 0)."""
    u_d = unique
    r_d = xp.maximum(tokens / u_d - 1.0, 0.0)
    g = _g(fit["A"], fit["B"], fit["alpha"], fit["beta"])
    u_n = xp.minimum(params, (u_d * g) ** (fit["beta"] / fit["alpha"]) * g)
    r_n = xp.maximum(params / u_n - 1.0, 0.0)
    return u_n, r_n, u_d, r_d


def data_constrained_loss(params, tokens, unique_tokens, fit: dict | None = None):
    """L(N, D, U_D) = E + A / N'^alpha + B / D'^beta with D' = effective(U_D, R_D, R_D*) and
    N' = effective(U_N, R_N, R_N*) (numpy, broadcasts). `fit` holds E, A, B, alpha, beta,
    R_D_star, R_N_star; default: the authors' published C4 fit (`published_fit`). With
    D <= U_D and N <= U_N it is the Chinchilla law. Raises ValueError if U_D > D."""
    fit = published_fit() if fit is None else fit
    n, d, u = (np.asarray(v, float) for v in (params, tokens, unique_tokens))
    if np.any(u > d):
        raise ValueError("unique_tokens must not exceed tokens (U_D <= D: a token is seen at least once)")
    u_n, r_n, u_d, r_d = _parts(n, d, u, fit, np)
    n_eff = effective(u_n, r_n, fit["R_N_star"])
    d_eff = effective(u_d, r_d, fit["R_D_star"])
    return fit["E"] + fit["A"] / n_eff ** fit["alpha"] + fit["B"] / d_eff ** fit["beta"]


def effective_sizes(params, tokens, unique_tokens, fit: dict | None = None) -> dict:
    """{N_eff, D_eff, U_N, R_N, R_D}: what the law counts a run's parameters and tokens as worth."""
    fit = published_fit() if fit is None else fit
    n, d, u = (np.asarray(v, float) for v in (params, tokens, unique_tokens))
    u_n, r_n, u_d, r_d = _parts(n, d, u, fit, np)
    return {"N_eff": effective(u_n, r_n, fit["R_N_star"]), "D_eff": effective(u_d, r_d, fit["R_D_star"]),
            "U_N": u_n, "R_N": r_n, "R_D": r_d}


def _log_predict(theta_P, logx_KxN):
    # In the fitting coordinates: log L = LSE(a - alpha log N', b - beta log D', e), as Chinchilla's.
    a, b, e, alpha, beta, log_rd, log_rn = (theta_P[i] for i in range(7))
    n, d, u = jnp.exp(logx_KxN[0]), jnp.exp(logx_KxN[1]), jnp.exp(logx_KxN[2])
    fit = {"A": jnp.exp(a), "B": jnp.exp(b), "alpha": alpha, "beta": beta}
    u_n, r_n, u_d, r_d = _parts(n, d, u, fit, jnp)
    log_n_eff = jnp.log(effective(u_n, r_n, jnp.exp(log_rn), jnp))
    log_d_eff = jnp.log(effective(u_d, r_d, jnp.exp(log_rd), jnp))
    return logsumexp_terms(a - alpha * log_n_eff, b - beta * log_d_eff, e)


def _to_params(theta) -> dict:
    a, b, e, alpha, beta, log_rd, log_rn = (float(t) for t in theta)
    return {"E": float(np.exp(e)), "A": float(np.exp(a)), "B": float(np.exp(b)), "alpha": alpha, "beta": beta,
            "R_D_star": float(np.exp(log_rd)), "R_N_star": float(np.exp(log_rn)), "a": a, "b": b, "e": e}


def data_constrained_grid(a=(0, 5, 10), b=(0, 5, 10), e=(-1, 0, 1), alpha=(0.2, 0.5), beta=(0.2, 0.5),
                          r_d_star=(3.0, 15.0, 60.0), r_n_star=(1.0, 5.0, 25.0)) -> np.ndarray:
    """Starting points in THETA_NAMES order (R* by their logs): 3 * 3 * 3 * 2 * 2 * 3 * 3 = 972."""
    return product_grid(a=a, b=b, e=e, alpha=alpha, beta=beta, log_rd=np.log(r_d_star),
                        log_rn=np.log(r_n_star))


DATA_CONSTRAINED = Law(
    name="data_constrained", inputs=("params", "tokens", "unique_tokens"), theta_names=THETA_NAMES,
    param_names=PARAM_NAMES, log_predict=_log_predict, to_params=_to_params,
    predict=lambda fit, n, d, u: data_constrained_loss(n, d, u, fit), default_grid=data_constrained_grid)


def fit_data_constrained(params, tokens, unique_tokens, loss, *, grid=None, n_boot: int = 0, seed: int = 0,
                         level: float = 0.95, boot_method: str = "pairs") -> dict:
    """Fits E, A, B, alpha, beta, R_D*, R_N* jointly to runs (N, D, U_D, loss) by the approach-3
    objective (Huber on log loss, multi-start L-BFGS: fitting.fit_law). R_D* and R_N* are only
    identified by runs that repeat data (D > U_D) and that exceed U_N (N > U_N); points without
    repetition pin the Chinchilla part. The authors fit the Chinchilla part on single-epoch runs
    first; `grid` can start every run there (rows in THETA_NAMES order)."""
    u = np.asarray(unique_tokens, float)
    if np.any(u > np.asarray(tokens, float)):
        raise ValueError("unique_tokens must not exceed tokens (U_D <= D)")
    return fit_law(DATA_CONSTRAINED, (params, tokens, unique_tokens), loss, grid=grid, n_boot=n_boot,
                   seed=seed, level=level, boot_method=boot_method)


__all__ = ["DATA_CONSTRAINED", "MUENNIGHOFF_2023", "data_constrained_grid", "data_constrained_loss",
           "effective", "effective_sizes", "fit_data_constrained", "optimal_params_for_tokens", "published_fit"]
