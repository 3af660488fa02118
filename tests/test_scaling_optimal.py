"""Compute-optimal allocation: the closed form against brute-force minimisation of L(N, C/(6N))."""
import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from scaling_jax.scaling import chinchilla_loss, chinchilla_optimal, chinchilla_optimal_ci

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


@pytest.mark.parametrize("fit", [TRUTH, {"E": 1.82, "A": 514.0, "B": 2115.2, "alpha": 0.35,
                                          "beta": 0.37}])
@pytest.mark.parametrize("budget", [1e18, 5.76e23, 1e26])
def test_closed_form_matches_numeric_minimum_over_n(fit, budget):
    def loss_at(log_n):
        n = np.exp(log_n)
        return chinchilla_loss(n, budget / (6 * n), fit)

    numeric = minimize_scalar(loss_at, bounds=(np.log(1e3), np.log(1e16)), method="bounded",
                              options={"xatol": 1e-10})
    closed = chinchilla_optimal(fit, budget)
    assert closed["N_opt"] == pytest.approx(np.exp(numeric.x), rel=1e-6)
    assert closed["D_opt"] == pytest.approx(budget / (6 * closed["N_opt"]), rel=1e-12)
    assert closed["loss"] == pytest.approx(numeric.fun, rel=1e-12)
    assert closed["loss"] <= numeric.fun * (1 + 1e-15)  # no better N exists, up to rounding
    assert closed["a"] == pytest.approx(fit["beta"] / (fit["alpha"] + fit["beta"]))


def test_chinchilla_budget_gives_tens_of_billions_of_parameters():
    # Gopher's budget, 5.76e23 FLOPs: eq. 10 puts N_opt near 40B (Hoffmann et al. table 3 area).
    out = chinchilla_optimal(TRUTH, 5.76e23)
    assert 2e10 < out["N_opt"] < 8e10


def test_vectorised_budgets_and_interval_from_samples():
    budgets = np.logspace(19, 24, 6)
    out = chinchilla_optimal(TRUTH, budgets)
    assert out["N_opt"].shape == (6,) and np.all(np.diff(out["N_opt"]) > 0)
    rng = np.random.default_rng(0)
    samples = {k: v * (1 + 0.01 * rng.standard_normal(200)) for k, v in TRUTH.items()}
    ci = chinchilla_optimal_ci(samples, 1e22)
    point = chinchilla_optimal(TRUTH, 1e22)
    for key in ("N_opt", "D_opt", "loss"):
        assert ci[key][0] < point[key] < ci[key][1], key


def test_non_positive_budget_is_rejected():
    with pytest.raises(ValueError, match="compute budget must be positive"):
        chinchilla_optimal(TRUTH, -1.0)
