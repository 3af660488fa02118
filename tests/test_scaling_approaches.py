"""Approaches 1, 2 and 3 of Hoffmann et al. on one IsoFLOP table: they recover a known law's N_opt(C),
under C = 6ND and under a sweep's own FLOP count (the `flops` column)."""
import json

import numpy as np
import pytest
from scipy.optimize import minimize_scalar

from scaling_jax.scaling import chinchilla_loss, chinchilla_optimal, write_results
from scaling_jax.scaling.approaches import chinchilla_approach, compare_approaches, lower_envelope
from scaling_jax.scaling.fit_cli import main
from scaling_jax.scaling.isoflop import fit_isoflop

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}
A_TRUE = TRUTH["beta"] / (TRUTH["alpha"] + TRUTH["beta"])
BUDGETS = np.logspace(18, 21, 4)


def _fpt(n):
    """A FLOP count that is not 6 N: a head-and-attention-like term on top (per token)."""
    return 6.0 * n + 4e5 * np.sqrt(n)


def _true_optimum(budget, fpt):
    res = minimize_scalar(lambda x: chinchilla_loss(np.exp(x), budget / fpt(np.exp(x)), TRUTH),
                          bounds=(np.log(1e5), np.log(1e12)), method="bounded", options={"xatol": 1e-10})
    return float(np.exp(res.x))


def _sweep(fpt, noise=0.0, seed=0, sizes=9):
    rng = np.random.default_rng(seed)
    n, d, c, label = [], [], [], []
    for budget in BUDGETS:
        centre = _true_optimum(budget, fpt)
        for size in centre * np.logspace(-0.8, 0.8, sizes):
            n.append(size)
            d.append(budget / fpt(size))
            c.append(budget)
            label.append(f"{budget:.0e}")
    n, d = np.array(n), np.array(d)
    loss = chinchilla_loss(n, d, TRUTH) * np.exp(noise * rng.standard_normal(n.size))
    return n, d, np.array(c), loss, np.array(label)


def test_under_6nd_approach_3_is_chinchillas_closed_form_and_2_recovers_the_exponent():
    six = lambda x: 6.0 * x
    n, d, _, loss, _ = _sweep(six)
    out = chinchilla_approach(n, d, loss)
    for row in out["budgets"]:
        assert row["N_opt"] == pytest.approx(chinchilla_optimal(out["fit"], row["C"])["N_opt"], rel=1e-4)
    assert out["a"] == pytest.approx(A_TRUE, abs=1e-3)
    iso = fit_isoflop(n, d, loss)
    assert iso["a"] == pytest.approx(A_TRUE, abs=1e-6) and iso["compute"] == "6ND"


def test_with_a_flops_column_every_approach_finds_the_optimum_of_that_count():
    n, d, c, loss, _ = _sweep(_fpt)
    result = compare_approaches(n, d, loss, flops=c, n_boot=0)
    assert result["compute"] == "flops column"
    truth = np.array([_true_optimum(b, _fpt) for b in BUDGETS])
    iso = np.array([b["N_opt"] for b in result["isoflop"]["budgets"]])
    chin = np.array([b["N_opt"] for b in result["chinchilla"]["budgets"]])
    env = np.array([b["N_opt"] for b in result["envelope"]["budgets"]])
    np.testing.assert_allclose(chin, truth, rtol=2e-3)  # the L(N, D) fit is exact here
    np.testing.assert_allclose(iso, truth, rtol=0.05)  # a parabola is an approximation of the profile
    np.testing.assert_allclose(env, truth, rtol=10 ** 0.1)  # the best of sizes 0.2 decades apart
    assert all(b["inside"] for b in result["isoflop"]["budgets"])
    assert result["envelope"]["falls"]
    # D_opt follows the count given: C / fpt(N_opt), not C / (6 N_opt).
    for b in result["isoflop"]["budgets"]:
        assert b["D_opt"] == pytest.approx(b["C"] / _fpt(b["N_opt"]), rel=0.01)
    # The 6ND fallback groups the same runs but reads other budgets and sizes.
    fallback = fit_isoflop(n, d, loss, budgets=np.repeat(np.arange(BUDGETS.size), 9))
    assert fallback["compute"] == "6ND"
    assert fallback["budgets"][0]["C"] < 0.9 * BUDGETS[0]


def test_envelope_picks_the_lowest_run_of_each_budget():
    n = np.array([1, 2, 3, 1, 2, 3], float) * 1e6
    c = np.array([1e15] * 3 + [1e16] * 3)
    loss = np.array([3.0, 2.9, 3.1, 2.8, 2.7, 2.75])
    env = lower_envelope(n, c / (6 * n), loss)
    assert [b["N_opt"] for b in env["budgets"]] == [2e6, 2e6]
    assert [b["loss"] for b in env["budgets"]] == [2.9, 2.7] and env["falls"]
    assert not lower_envelope(n, c / (6 * n), loss[::-1])["falls"]


def test_noisy_intervals_cover_what_each_approach_estimates():
    n, d, c, loss, labels = _sweep(_fpt, noise=0.003, seed=3, sizes=7)
    result = compare_approaches(n, d, loss, flops=c, budgets=labels, n_boot=100, seed=0)
    truth = np.array([_true_optimum(b, _fpt) for b in BUDGETS])
    # A parabola is not the profile's true shape: approach 2 estimates the vertex of the parabola
    # through noiseless losses at the sampled sizes (a few percent off the optimum), approach 3 the
    # optimum itself.
    vertex = np.array([b["N_opt"] for b in fit_isoflop(n, d, chinchilla_loss(n, d, TRUTH), flops=c,
                                                        budgets=labels)["budgets"]])
    for key, target in (("isoflop", vertex), ("chinchilla", truth)):
        a_target = np.polyfit(np.log(BUDGETS), np.log(target), 1)[0]
        lo, hi = result[key]["ci"]["a"]
        assert lo <= a_target <= hi, (key, lo, a_target, hi)
        for row, t in zip(result[key]["budgets"], target):
            lo, hi = row["ci"]["N_opt"]
            assert lo <= t <= hi, (key, row["C"], lo, t, hi)
    assert result["isoflop"]["bootstrap"]["method"] == "residual"


def test_fit_verb_writes_the_side_by_side_plot_and_table(tmp_path, capsys):
    n, d, c, loss, labels = _sweep(_fpt, noise=0.002, seed=1, sizes=5)
    rows = [{"params": a, "tokens": b, "loss": l, "flops": f, "budget": g}
            for a, b, l, f, g in zip(n, d, loss, c, labels)]
    path = write_results(tmp_path / "results.csv", rows)
    out = tmp_path / "fit.json"
    assert main([str(path), "--law", "approaches", "--bootstrap", "20", "--out", str(out),
                 "--plot-dir", str(tmp_path)]) == 0
    printed = capsys.readouterr().out
    assert "approaches (compute: flops column)" in printed and "approach 2 parabolas: N_opt ∝ C^" in printed
    report = json.loads(out.read_text())["laws"]["approaches"]
    assert set(report) >= {"envelope", "isoflop", "chinchilla"}
    png = (tmp_path / "approaches.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
