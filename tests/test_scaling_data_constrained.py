"""The data-constrained law (Muennighoff et al. 2023): the authors' golden values, its limits, and fits
that recover known parameters."""
import numpy as np
import pytest

from scaling_jax.scaling import chinchilla_loss
from scaling_jax.scaling.data_constrained import (data_constrained_grid, data_constrained_loss, effective,
                                                  effective_sizes, fit_data_constrained,
                                                  optimal_params_for_tokens, published_fit)


def test_golden_values_of_the_authors_published_fit():
    # The two models of their Figure 1 (right), values printed in huggingface/datablations' README.
    assert data_constrained_loss(6.34e9, 242e9, 25e9) == pytest.approx(2.2256440889984477, abs=1e-9)
    assert data_constrained_loss(8.67e9, 178e9, 25e9) == pytest.approx(2.2269634075087867, abs=1e-9)


def test_without_repetition_or_excess_parameters_it_is_chinchilla():
    fit = published_fit()
    n = optimal_params_for_tokens(1e10, fit) * np.array([0.1, 0.5, 1.0])  # N <= U_N
    d = np.full(3, 1e10)
    np.testing.assert_allclose(data_constrained_loss(n, d, d, fit), chinchilla_loss(n, d, fit), rtol=1e-12)


def test_repeated_tokens_saturate_at_one_plus_r_star_unique_epochs():
    fit = published_fit()
    u = 1e9
    sizes = effective_sizes(1e6, np.array([u, 2 * u, 1e6 * u]), u, fit)
    assert sizes["D_eff"][0] == pytest.approx(u)  # one epoch counts in full
    # A second epoch is worth almost a fresh one (R_D = 1 << R_D* ~ 15): 1 - exp(-1/R*) of R* U.
    assert sizes["D_eff"][1] == pytest.approx(u + u * fit["R_D_star"] * (1 - np.exp(-1 / fit["R_D_star"])))
    assert u < sizes["D_eff"][1] < 2 * u
    assert sizes["D_eff"][2] == pytest.approx(u * (1 + fit["R_D_star"]), rel=1e-9)


def test_optimal_params_for_tokens_inverts_chinchillas_allocation():
    from scaling_jax.scaling import chinchilla_optimal

    fit = published_fit()
    best = chinchilla_optimal(fit, 1e22)
    assert optimal_params_for_tokens(best["D_opt"], fit) == pytest.approx(best["N_opt"], rel=1e-10)


def test_more_unique_tokens_never_hurt_and_unique_above_total_is_an_error():
    loss = data_constrained_loss(1e9, 1e11, np.logspace(9, 11, 7))
    assert np.all(np.diff(loss) < 0)
    with pytest.raises(ValueError, match="must not exceed tokens"):
        data_constrained_loss(1e9, 1e10, 2e10)


def _synthetic(truth, noise=0.0, seed=0):
    """Runs over N, D and U_D: many repeat data (R_D up to 60) and exceed U_N (R_N up to ~30)."""
    rng = np.random.default_rng(seed)
    n, d, u = (x.ravel() for x in np.meshgrid(np.logspace(7, 9.5, 6), np.logspace(9, 11.5, 6),
                                             np.logspace(8.7, 11.5, 5)))
    keep = u <= d
    n, d, u = n[keep], d[keep], u[keep]
    loss = data_constrained_loss(n, d, u, truth) * np.exp(noise * rng.standard_normal(n.size))
    return n, d, u, loss


def _truth():
    return {**published_fit(), "beta": 0.28, "R_D_star": 15.0, "R_N_star": 5.0}


def test_joint_fit_recovers_the_generating_parameters_without_noise():
    truth = _truth()
    n, d, u, loss = _synthetic(truth)
    # Starts near the truth in the Chinchilla part, spread in R_D*, R_N*: this tests the estimator.
    grid = data_constrained_grid(a=(6.0,), b=(7.0,), e=(0.5,), alpha=(0.3,), beta=(0.3,))
    fit = fit_data_constrained(n, d, u, loss, grid=grid)
    for key in ("E", "A", "B", "alpha", "beta", "R_D_star", "R_N_star"):
        assert fit[key] == pytest.approx(truth[key], rel=1e-4), key
    np.testing.assert_allclose(data_constrained_loss(n, d, u, fit), loss, rtol=1e-7)


def test_noisy_fit_recovers_r_star_within_a_few_percent():
    truth = _truth()
    n, d, u, loss = _synthetic(truth, noise=0.005, seed=1)
    grid = data_constrained_grid(a=(6.0,), b=(7.0,), e=(0.5,), alpha=(0.3,), beta=(0.3,))
    fit = fit_data_constrained(n, d, u, loss, grid=grid)
    assert fit["R_D_star"] == pytest.approx(truth["R_D_star"], rel=0.15)
    assert fit["R_N_star"] == pytest.approx(truth["R_N_star"], rel=0.25)
    assert abs(fit["alpha"] - truth["alpha"]) < 0.03 and abs(fit["beta"] - truth["beta"]) < 0.03


def test_effective_is_the_papers_decaying_sum():
    # d/dR [U + U R* (1 - e^(-R/R*))] = U e^(-R/R*): the first repetition is worth a fresh epoch,
    # later ones decay with rate 1/R* (the paper's eq. 5), checked by central differences.
    r = np.linspace(0, 50, 11)
    h = 1e-6
    slope = (effective(1.0, r + h, 15.0) - effective(1.0, r - np.where(r > 0, h, 0), 15.0)) / np.where(r > 0, 2 * h, h)
    np.testing.assert_allclose(slope, np.exp(-r / 15.0), rtol=1e-5)
