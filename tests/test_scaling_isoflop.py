"""IsoFLOP profiles (approach 2) recover a = beta/(alpha+beta), b = alpha/(alpha+beta) of a known law."""
import numpy as np
import pytest

from scaling_jax.scaling import (chinchilla_loss, chinchilla_optimal, fit_isoflop, fit_parabola,
                                 group_budgets)

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
A_TRUE = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])  # 0.4516
B_TRUE = TRUTH["alpha"] / (TRUTH["alpha"] + TRUTH["beta"])  # 0.5484


def isoflop_sweep(offsets_decades=(0.0,) * 5, noise=0.0, seed=0):
    """Nine sizes over 1.6 decades per budget, centred offsets_decades away from the optimum."""
    rng = np.random.default_rng(seed)
    n, d = [], []
    for budget, offset in zip(np.logspace(18, 22, len(offsets_decades)), offsets_decades):
        sizes = chinchilla_optimal(TRUTH, budget)["N_opt"] * np.logspace(-0.8, 0.8, 9) * 10 ** offset
        n.extend(sizes)
        d.extend(budget / (6 * sizes))
    n, d = np.array(n), np.array(d)
    loss = chinchilla_loss(n, d, TRUTH) * np.exp(noise * rng.standard_normal(n.size))
    return n, d, loss


def test_centred_noiseless_profiles_recover_exponents_exactly():
    # Every profile has the same shape in log N about its optimum, so a centred parabola's bias is
    # the same at every budget and cancels in the slope.
    fit = fit_isoflop(*isoflop_sweep())
    assert fit["a"] == pytest.approx(A_TRUE, abs=1e-9)
    assert fit["b"] == pytest.approx(B_TRUE, abs=1e-9)
    assert len(fit["budgets"]) == 5 and all(b["inside"] for b in fit["budgets"])


def test_off_centre_profiles_recover_exponents_within_tolerance():
    fit = fit_isoflop(*isoflop_sweep(offsets_decades=(-0.3, 0.2, 0.0, 0.3, -0.2)))
    assert abs(fit["a"] - A_TRUE) < 0.02
    assert abs(fit["b"] - B_TRUE) < 0.02


def test_noisy_profiles_recover_exponents_and_intervals_cover_them():
    fit = fit_isoflop(*isoflop_sweep(noise=0.005), n_boot=200, seed=0)
    assert abs(fit["a"] - A_TRUE) < 0.02
    assert fit["a"] + fit["b"] == pytest.approx(1.0, abs=1e-9)  # D_opt = C / (6 N_opt)
    for name, truth in (("a", A_TRUE), ("b", B_TRUE)):
        lo, hi = fit["ci"][name]
        assert lo <= truth <= hi, name


def test_budgets_group_by_compute_and_explicit_labels_agree():
    n, d, loss = isoflop_sweep()
    labels = group_budgets(6 * n * d * np.random.default_rng(0).uniform(0.97, 1.03, n.size))
    assert np.unique(labels).size == 5
    by_compute = fit_isoflop(n, d, loss)
    by_label = fit_isoflop(n, d, loss, budgets=np.repeat(["c18", "c19", "c20", "c21", "c22"], 9))
    assert by_label["a"] == pytest.approx(by_compute["a"], rel=1e-12)


def test_parabola_vertex_and_concave_profile_error():
    x = np.linspace(-1, 1, 7)
    vertex = fit_parabola(x + np.log(1e9), 2.0 + 0.3 * x ** 2)
    assert vertex["N_opt"] == pytest.approx(1e9, rel=1e-9)
    assert vertex["loss_opt"] == pytest.approx(2.0, rel=1e-12)
    with pytest.raises(ValueError, match="not convex in log N"):
        fit_parabola(x, 2.0 - 0.3 * x ** 2)


def test_too_few_budgets_is_a_clear_error():
    n, d, loss = isoflop_sweep(offsets_decades=(0.0,))
    with pytest.raises(ValueError, match="at least 2 compute budgets"):
        fit_isoflop(n, d, loss)
