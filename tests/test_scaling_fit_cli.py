"""The `fit` verb end to end: CSV in, table and JSON and PNGs out; bad input exits non-zero cleanly."""
import json

import numpy as np
import pytest

from scaling_jax.scaling import chinchilla_loss, chinchilla_optimal, write_results
from scaling_jax.scaling.fit_cli import main

TRUTH = {"E": 1.69, "A": 406.4, "B": 410.7, "alpha": 0.34, "beta": 0.28}


@pytest.fixture(scope="module")
def sweep_csv(tmp_path_factory):
    """An IsoFLOP-shaped sweep: 5 budgets x 7 sizes, 0.5% noise, plus an unrelated column."""
    rng = np.random.default_rng(0)
    rows = []
    for budget in np.logspace(18, 21, 5):
        for n in chinchilla_optimal(TRUTH, budget)["N_opt"] * np.logspace(-0.8, 0.8, 7):
            d = budget / (6 * n)
            loss = chinchilla_loss(n, d, TRUTH) * np.exp(0.005 * rng.standard_normal())
            rows.append({"params": n, "tokens": d, "loss": loss, "run": f"run{len(rows)}"})
    return write_results(tmp_path_factory.mktemp("sweep") / "results.csv", rows)


def test_fit_all_laws_writes_json_table_and_plots(sweep_csv, tmp_path, capsys):
    out, plots = tmp_path / "fit.json", tmp_path / "plots"
    status = main([str(sweep_csv), "--law", "all", "--out", str(out), "--bootstrap", "20",
                   "--budget", "1e22", "--grid", "coarse", "--plot-dir", str(plots)])
    printed = capsys.readouterr().out
    assert status == 0
    report = json.loads(out.read_text())
    for key in ("E", "A", "B", "alpha", "beta"):  # the contract: Chinchilla's keys at top level
        assert report[key] == report["laws"]["chinchilla"][key]
        lo, hi = report["ci"][key]
        assert lo <= report[key] <= hi
    assert abs(report["alpha"] - TRUTH["alpha"]) < 0.05
    assert set(report["laws"]) == {"chinchilla", "power_N", "power_D", "kaplan_N", "kaplan_D",
                                   "isoflop"}
    assert abs(report["laws"]["isoflop"]["a"] - 0.28 / 0.62) < 0.03
    optimal = {row["law"]: row for row in report["optimal"]}
    assert set(optimal["chinchilla"]["ci"]) == {"N_opt", "D_opt", "loss"}
    assert "isoflop" in optimal
    assert "chinchilla" in printed and "isoflop" in printed and "optimal at C=1e+22" in printed
    for name in ("loss_vs_params.png", "isoflop.png", "frontier.png"):
        data = (plots / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000, name


def test_bad_csv_exits_non_zero_with_the_message_and_no_traceback(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("params,loss\n1e6,3.0\n")
    status = main([str(bad), "--out", str(tmp_path / "fit.json")])
    err = capsys.readouterr().err
    assert status == 1
    assert "missing column 'tokens'; columns present: params, loss" in err
    assert "Traceback" not in err
    assert not (tmp_path / "fit.json").exists()


def test_law_that_cannot_fit_exits_non_zero_unless_all(sweep_csv, tmp_path, capsys):
    grid_rows = [{"params": n, "tokens": d, "loss": float(chinchilla_loss(n, d, TRUTH))}
                 for n in (1e7, 1e8, 1e9) for d in (1e9, 1e10)]  # C = 6ND never repeats
    path = write_results(tmp_path / "grid.csv", grid_rows)
    assert main([str(path), "--law", "isoflop", "--bootstrap", "0"]) == 1
    assert "IsoFLOP needs at least 2 compute budgets" in capsys.readouterr().err


def test_width_sweep_at_one_token_count_fits_power_law_in_n_and_skips_d(tmp_path, capsys):
    # What `scaling-jax sweep` produces and then fits with --law power: one D for every run.
    rows = [{"params": n, "tokens": 2e8, "loss": 1.8 + 400 / n ** 0.34, "train_loss": ""}
            for n in np.logspace(5.5, 8, 5)]
    path = write_results(tmp_path / "results.csv", rows)
    out = tmp_path / "fit.json"
    status = main([str(path), "--law", "power", "--out", str(out), "--bootstrap", "10",
                   "--plot-dir", str(tmp_path)])
    assert status == 0, capsys.readouterr().err
    report = json.loads(out.read_text())
    assert report["laws"]["power_N"]["alpha"] == pytest.approx(0.34, rel=1e-6)
    assert "power_D" in report["skipped"] and "power_D" not in report["laws"]
    assert (tmp_path / "loss_vs_N.png").is_file()


def test_help_and_bad_arguments(capsys):
    assert main(["--help"]) == 0
    assert "RESULTS.csv" in capsys.readouterr().out
    assert main(["x.csv", "--law", "nope"]) == 2
