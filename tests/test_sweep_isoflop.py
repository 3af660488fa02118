"""`sweep.budgets` (IsoFLOP) and `sweep.lr_grid` (learning-rate sweeps): the runs each plans, the errors that
name the key, and the analysis after the last run (with stand-in training, so it runs in seconds)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest

from scaling_jax.commands.sweep import member_configs, run_sweep
from scaling_jax.config import load_config
from scaling_jax.errors import ConfigError
from scaling_jax.scaling import chinchilla_loss, gpt2_flops_per_token, gpt2_params

REPO = Path(__file__).resolve().parents[1]
TRUTH = {"E": 1.0, "A": 50.0, "B": 400.0, "alpha": 0.34, "beta": 0.28}
BASE = ["model.vocab_size=257", "data.bpe_vocab=257", "data.seq_len=32", "model.max_len=32", "data.batch_size=8",
        "sweep.head_dim=8", "sweep.n_layers=2", "data.tokenizer=", "sweep.min_steps=5"]


def isoflop(tmp_path, *extra):
    return load_config(REPO / "configs/mup_cpu.yaml", [*BASE, f"run.dir={tmp_path}", "sweep.lr_grid=[]",
                                                      "sweep.widths=[16,24,32,48,64,96]",
                                                      "sweep.budgets=[1.5e9, 4.5e9]", *extra])


def test_each_budget_runs_the_widths_that_meet_it_with_tokens_from_the_one_flop_count(tmp_path):
    cfg = isoflop(tmp_path, "sweep.max_tokens=40000")
    members = member_configs(cfg)
    per_budget = {}
    for m in members:
        (budget,) = m.sweep.budgets
        fpt = gpt2_flops_per_token(257, m.model.d_model, 2, 32)
        flops = fpt * m.train.steps * 8 * 32
        assert flops == pytest.approx(budget, rel=0.06), m.run.name
        assert m.train.steps >= 5 and m.train.steps * 8 * 32 <= 40000
        per_budget.setdefault(budget, []).append(m.model.d_model)
    # The widest widths lack steps at the small budget; the narrowest exceed max_tokens at the big one.
    assert per_budget[1.5e9] == [16, 24, 32, 48, 64] and per_budget[4.5e9] == [24, 32, 48, 64, 96]
    assert len({m.run.name for m in members}) == len(members)
    assert all(m.data.tokenizer == str(tmp_path / "tokenizer") for m in members)  # one tokenizer for all


def test_a_budget_too_few_widths_can_meet_is_an_error_naming_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"sweep.budgets: 2e\+07 FLOPs is met by 0 of the widths"):
        member_configs(isoflop(tmp_path, "sweep.budgets=[2e7]"))
    with pytest.raises(ConfigError, match="sweep.tokens: an IsoFLOP sweep"):
        isoflop(tmp_path, "sweep.tokens=1000")


def test_lr_grid_trains_every_width_at_every_rate(tmp_path):
    cfg = load_config(REPO / "configs/mup_cpu.yaml", [*BASE, f"run.dir={tmp_path}", "sweep.widths=[16,32]",
                                                      "sweep.lr_grid=[1e-3, 2e-3, 4e-3]", "train.steps=7"])
    members = member_configs(cfg)
    assert [(m.model.d_model, m.optim.lr) for m in members] == [(d, lr) for d in (16, 32) for lr in (1e-3, 2e-3, 4e-3)]
    assert all(m.model.base_width == 64 and m.model.parametrization == "mup" for m in members)
    assert members[0].run.name == "d16_l2_lr0.001"


def _fake_train(loss_of):
    """Stands in for train(): writes the result.json the sweep reads, with a loss from `loss_of`."""
    def train(member):
        m = member.model
        total = gpt2_params(m.vocab_size, m.max_len, m.d_model, m.n_layers)
        out = Path(member.run.dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "result.json").write_text(json.dumps({"summary": {"params_total": total},
                                                     "eval": {"loss": loss_of(member)}}))
    return train


def test_isoflop_sweep_writes_budget_and_flops_columns_and_the_three_approaches(tmp_path):
    cfg = isoflop(tmp_path, "sweep.budgets=[1.5e9, 4.5e9, 1.35e10]")

    def loss(member):
        m = member.model
        n = gpt2_params(257, 32, m.d_model, m.n_layers, embeddings=False)
        return float(chinchilla_loss(n, member.train.steps * 8 * 32, TRUTH))

    out = run_sweep(cfg, train_fn=_fake_train(loss))
    rows = list(csv.DictReader(out.open()))
    assert {"budget", "flops", "parametrization"} <= set(rows[0]) and rows[0]["parametrization"] == "mup"
    assert {float(r["budget"]) for r in rows} == {1.5e9, 4.5e9, 1.35e10}
    report = json.loads((tmp_path / "fit.json").read_text())["laws"]["approaches"]
    assert report["compute"] == "flops column" and report["envelope"]["falls"]
    assert len(report["isoflop"]["budgets"]) == 3
    assert (tmp_path / "approaches.png").stat().st_size > 20_000


def test_lr_sweep_reports_the_best_rate_per_width_and_plots(tmp_path, capsys):
    cfg = load_config(REPO / "configs/mup_cpu.yaml", [*BASE, f"run.dir={tmp_path}", "sweep.widths=[16,32,48]",
                                                      "sweep.lr_grid=[1e-3, 2e-3, 4e-3, 8e-3]", "train.steps=7"])
    loss = lambda m: 2.0 + (np.log2(m.optim.lr / 4e-3)) ** 2 * 0.1 + 16 / m.model.d_model
    run_sweep(cfg, train_fn=_fake_train(loss))
    best = json.loads((tmp_path / "lr_sweep.json").read_text())
    assert [b["best_lr"] for b in best] == [4e-3] * 3 and [b["d_model"] for b in best] == [16, 32, 48]
    assert "| d_model |" in capsys.readouterr().out
    assert (tmp_path / "lr_sweep.png").stat().st_size > 10_000


def test_the_cpu_isoflop_config_plans_three_budgets_of_at_least_five_widths_within_four_passes_of_data():
    cfg = load_config(REPO / "configs/isoflop_cpu.yaml")
    members = member_configs(cfg)
    per_budget = {}
    for m in members:
        per_budget.setdefault(m.sweep.budgets[0], []).append(m)
        assert m.train.steps * m.data.batch_size * m.data.seq_len <= 4 * 4_784_768  # the training works' bytes
        assert m.model.parametrization == "mup" and m.model.base_width == min(cfg.sweep.widths)
    assert len(per_budget) >= 3 and all(len(v) >= 5 for v in per_budget.values())
    # Bytes, so non-embedding parameters dominate from d_model 16 up (the fit's N counts only them).
    for m in members:
        d = m.model.d_model
        assert (gpt2_params(257, 128, d, 2, embeddings=False) > (257 + 128) * d) == (d >= 16)
