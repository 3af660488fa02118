"""One-variable laws: saturating E + A/x^alpha and Kaplan's (x_c/x)^alpha recover known exponents."""
import numpy as np
import pytest

from scaling_jax.scaling import fit_kaplan, fit_power_law

X = np.logspace(6, 10, 40)


@pytest.mark.parametrize("variable,names", [("N", ("E", "A", "alpha")), ("D", ("E", "B", "beta"))])
def test_saturating_power_law_is_exact_on_noiseless_data(variable, names):
    loss = 1.69 + 406.4 / X ** 0.34
    fit = fit_power_law(X, loss, variable=variable)
    assert fit["law"] == f"power_{variable}"
    for name, value in zip(names, (1.69, 406.4, 0.34)):
        assert fit[name] == pytest.approx(value, rel=1e-6), name


def test_saturating_power_law_recovers_exponent_under_noise_with_intervals():
    # 200 points, 2% noise: the exponent's spread across seeds is about 0.005.
    x = np.logspace(6, 10, 200)
    rng = np.random.default_rng(0)
    loss = (1.69 + 406.4 / x ** 0.34) * np.exp(0.02 * rng.standard_normal(x.size))
    fit = fit_power_law(x, loss, n_boot=100, seed=0)
    assert abs(fit["alpha"] - 0.34) < 0.02
    assert fit["E"] == pytest.approx(1.69, rel=0.05)
    assert set(fit["ci"]) == {"E", "A", "alpha"}
    lo, hi = fit["ci"]["alpha"]
    assert lo <= 0.34 <= hi


@pytest.mark.parametrize("variable", ["N", "D"])
def test_kaplan_law_is_exact_on_noiseless_data(variable):
    # Kaplan et al. (2020) eq. 1.1: N_c = 8.8e13, alpha_N = 0.076.
    fit = fit_kaplan(X, (8.8e13 / X) ** 0.076, variable=variable)
    assert fit[f"alpha_{variable}"] == pytest.approx(0.076, rel=1e-8)
    assert fit[f"{variable}_c"] == pytest.approx(8.8e13, rel=1e-6)


def test_kaplan_law_recovers_exponent_under_noise_and_outliers():
    rng = np.random.default_rng(0)
    loss = (5.4e13 / X) ** 0.095 * np.exp(0.02 * rng.standard_normal(X.size))
    loss[[3, 17, 30]] *= 1.5  # diverged runs: the Huber loss barely notices them
    fit = fit_kaplan(X, loss, variable="D", n_boot=50, seed=0)
    assert abs(fit["alpha_D"] - 0.095) < 0.005
    assert fit["ci"]["alpha_D"][0] <= 0.095 <= fit["ci"]["alpha_D"][1]


def test_power_law_rejects_unknown_variable_and_too_few_points():
    with pytest.raises(ValueError, match="variable must be 'N'"):
        fit_power_law(X, 1 + 1 / X, variable="C")
    with pytest.raises(ValueError, match="power_N law has 3 parameters but got 2 points"):
        fit_power_law(X[:2], 1 + 1 / X[:2])
