"""`scaling-jax sweep` on a tiny width family: results.csv with the contract columns, exact
non-embedding parameter counts, finished members never rerun, the fit and plots written."""
import csv
from pathlib import Path

import pytest

from scaling_jax.config import load_config
from scaling_jax.scaling import gpt2_params
from scaling_jax.commands.sweep import member_configs, run_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = ["sweep.widths=[16,32,48]", "sweep.head_dim=16", "sweep.aspect_ratio=16", "sweep.tokens=1024",
        "sweep.base_width=32", "data.seq_len=32", "model.max_len=32", "data.batch_size=8",
        "data.eval_batch_size=8", "data.max_eval_batches=2", "data.train=[shakespeare/sonnets_gut.txt]",
        "data.valid=[shakespeare/lovers_complaint_gut.txt]", "optim.warmup_steps=0"]


def test_member_configs_follow_the_recipe():
    cfg = load_config(REPO / "configs/sweep_cpu.yaml", TINY)
    members = member_configs(cfg)
    assert [(m.model.d_model, m.model.n_layers, m.model.n_heads) for m in members] == [(16, 1, 1), (32, 2, 2),
                                                                                        (48, 3, 3)]
    assert all(m.train.steps == 4 for m in members)  # 1024 tokens / (8 x 32)
    assert [m.optim.lr for m in members] == pytest.approx([cfg.optim.lr * 32 / d for d in (16, 32, 48)])
    with pytest.raises(ValueError, match="not a multiple of sweep.head_dim"):
        member_configs(load_config(REPO / "configs/sweep_cpu.yaml", [*TINY, "sweep.widths=[20]"]))


@pytest.mark.slow
def test_sweep_writes_results_fits_and_skips_finished_members(tmp_path, shared_data):
    cfg = load_config(REPO / "configs/sweep_cpu.yaml", [*TINY, f"run.dir={tmp_path}"])
    out = run_sweep(cfg)
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 3 and {"params", "tokens", "loss", "flops"} <= set(rows[0])
    for r in rows:
        d, n = int(r["d_model"]), int(r["n_layers"])
        assert int(r["params"]) == gpt2_params(50257, 32, d, n, embeddings=False)
        assert int(r["params_total"]) == gpt2_params(50257, 32, d, n)  # the model's own count agrees
        # tokens trained on: 4 steps x 8 windows x 31 next-token targets (a window of 32 has 31)
        assert int(r["tokens"]) == 4 * 8 * 31 and float(r["loss"]) > 0
    assert (tmp_path / "fit.json").is_file()
    assert list(tmp_path.glob("*.png")), "the sweep writes plots"

    def must_not_train(_cfg):
        raise AssertionError("a finished member was trained again")
    assert run_sweep(cfg, train_fn=must_not_train) == out
