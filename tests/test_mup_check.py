"""The coordinate check (`scaling-jax mup-check`) at small widths: under muP the logits' RMS after 5 steps
stays flat in width; under SP it grows with width."""
from pathlib import Path

import pytest

from scaling_jax.cli import main
from scaling_jax.commands.mup_check import check_width, plot, summarize
from scaling_jax.config import load_config

REPO = Path(__file__).resolve().parents[1]
SMALL = ["model.d_model=16", "model.n_heads=2", "model.base_width=16", "data.seq_len=32", "model.max_len=32",
         "data.batch_size=8", "data.train=[shakespeare/sonnets_gut.txt]",
         "data.valid=[shakespeare/lovers_complaint_gut.txt]", "optim.lr=0.01"]


@pytest.mark.slow
def test_logits_stay_flat_in_width_under_mup_and_grow_under_sp(tmp_path, shared_data):
    # One layer, widths 16..128 (8x): the full check (64..1024, two layers) is a command run (README).
    cfg = load_config(REPO / "configs/mup_cpu.yaml", [*SMALL, f"run.dir={tmp_path}", "model.n_layers=1"])
    rows = [r for p, widths in (("mup", (16, 32, 64, 128)), ("sp", (16, 128))) for w in widths
            for r in check_width(cfg, w, p, 5)]
    summary = summarize(rows, 5)
    mup, sp = summary["mup"], summary["sp"]
    assert mup["spread"] <= 1.5, mup
    assert sp["growth"] >= 3.0, sp
    # At the base width muP and SP differ only in the attention scale: nearly the same logits.
    assert mup["logits_rms"][0] == pytest.approx(sp["logits_rms"][0], rel=0.1)
    assert {"wte", "h_0", "h_0/attn", "h_0/mlp", "logits"} <= {r["name"] for r in rows}
    png = plot(rows, tmp_path / "check.png", 5)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_arguments_are_one_line_errors(tmp_path, capsys):
    args = ["mup-check", str(REPO / "configs/mup_cpu.yaml"), f"run.dir={tmp_path}"]
    assert main([*args, "--parametrizations", "sp,xx"]) == 2
    assert "--parametrizations" in capsys.readouterr().err
    assert main([*args, "model.base_width=0", "model.parametrization=sp", "--widths", "32"]) == 2
    assert "model.base_width" in capsys.readouterr().err
    assert main([*args, "--widths", "40"]) == 2
    assert "not a multiple of the head size 16" in capsys.readouterr().err
