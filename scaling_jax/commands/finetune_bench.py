"""Time to quality, `scaling-jax bench --finetune`: our `configs/ner.yaml` and transformers' PyTorch
fine-tune of the same MiniLM on the same WNUT-17 files (`commands/ner_torch_peer.py`), one after the
other on this machine, each timed from its process start to its test entity F1, with peak RSS."""
from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from scaling_jax.config import expand_path, load_config
from scaling_jax.data.tokenizer import resolve_model_dir
from scaling_jax.metrics_log import read_metrics

TARGET_F1 = 0.41
# Runs `argv` as a child and prints its wall time and peak RSS: one wrapper per contender, so the
# RSS of one never counts for the other (RUSAGE_CHILDREN keeps the largest child waited for).
_WRAP = ("import json, resource, subprocess, sys, time\n"
         "t = time.time(); rc = subprocess.run(sys.argv[1:]).returncode\n"
         "print('@@' + json.dumps({'rc': rc, 'start': t, 'end': time.time(),"
         " 'peak_rss_mib': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}), flush=True)\n")


def _run(argv: list[str], cwd: Path) -> tuple[dict, list[str]]:
    out = subprocess.run([sys.executable, "-c", _WRAP, *argv], cwd=cwd, capture_output=True, text=True)
    lines = out.stdout.splitlines()
    stats = next((json.loads(line[2:]) for line in lines if line.startswith("@@")), None)
    if stats is None or stats["rc"] != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} failed (exit {stats and stats['rc']}):\n{out.stderr[-3000:]}")
    return stats, lines


def run(config: str = "configs/ner.yaml", overrides: tuple[str, ...] = (), epochs: int = 5) -> list[dict]:
    """Ours, then the PyTorch peer; returns bench rows (wall time, time to test F1 >= 0.41, F1, RSS)."""
    repo = Path.cwd()
    cfg = load_config(config, overrides)
    model_dir = resolve_model_dir(cfg)  # fetched once before timing either side
    root = expand_path(cfg.data.root)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        # The test split scored at every eval (choosing nothing), as the peer scores it every epoch:
        # time to F1 is then when a test score first reached it, on either side.
        stats, lines = _run(["scaling-jax", "train", config, *overrides, "train.eval_test=true",
                             f"run.dir={tmp}/ours"], repo)
        result = json.loads(next(line for line in reversed(lines) if line.startswith("{")))
        tests = [r for r in read_metrics(Path(tmp) / "ours" / "metrics.jsonl")
                 if r["split"] == "test" and r.get("phase") != "before"]
        first = next((r for r in tests if r["f1"] >= TARGET_F1), None)
        rows.append({"name": "finetune/ours", "wall_s": stats["end"] - stats["start"], "test_f1": result["test"]["f1"],
                     "time_to_f1_s": first["time"] - stats["start"] if first else None,
                     "step_reaching_f1": first["step"] if first else None,
                     "f1_by_eval": [[r["step"], round(r["f1"], 4)] for r in tests],
                     "peak_rss_mib": stats["peak_rss_mib"]})
    stats, lines = _run([sys.executable, "-m", "scaling_jax.commands.ner_torch_peer", str(model_dir),
                         str(root / cfg.data.train[0]), str(root / cfg.data.test[0]), "--epochs", str(epochs)], repo)
    epochs_out = [json.loads(line) for line in lines if line.startswith('{"epoch"')]
    first = next((e for e in epochs_out if e["test_f1"] >= TARGET_F1), None)
    rows.append({"name": "finetune/torch", "wall_s": stats["end"] - stats["start"],
                 "test_f1": max(e["test_f1"] for e in epochs_out),
                 "time_to_f1_s": first["time"] - stats["start"] if first else None,
                 "epoch_reaching_f1": first["epoch"] if first else None,
                 "f1_by_epoch": [round(e["test_f1"], 4) for e in epochs_out], "peak_rss_mib": stats["peak_rss_mib"]})
    ours, torch_row = rows
    # torch_over_ours: None when either side never reached the F1 (then the F1 columns tell)
    both = ours["time_to_f1_s"] and torch_row["time_to_f1_s"]
    rows.append({"name": "ratio/finetune", "torch_over_ours_time_to_f1":
                 torch_row["time_to_f1_s"] / ours["time_to_f1_s"] if both else None,
                 "torch_over_ours_wall": torch_row["wall_s"] / ours["wall_s"],
                 # where the peer never reaches the F1, its whole run bounds its time to it from below
                 "ours_time_to_f1_over_torch_wall":
                 ours["time_to_f1_s"] / torch_row["wall_s"] if ours["time_to_f1_s"] else None,
                 "rss_ours_over_torch": ours["peak_rss_mib"] / torch_row["peak_rss_mib"]})
    for r in rows:
        r.setdefault("tokens_per_s", None), r.setdefault("step_ms", None), r.setdefault("mfu", None)
    return rows


__all__ = ["run", "TARGET_F1"]
