"""2 processes x 4 CPU devices through launch/local.sh train like 1 process x 8 devices, each
reading only its own rows of every global batch (disjoint, their union the batch), and the
2-process checkpoint restores in 1 process."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from scaling_jax.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.train=[shakespeare/sonnets_gut.txt]", "data.valid=[shakespeare/lovers_complaint_gut.txt]",
         "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_len=32", "data.seq_len=32",
         "data.batch_size=8", "data.eval_batch_size=8", "data.max_eval_batches=2", "train.log_every=1",
         "train.steps=20", "checkpoint.every=10", "train.eval_every=10", "mesh.data=2", "mesh.fsdp=2",
         "mesh.tensor=2"]


def _losses(run_dir, split):
    return [(r["step"], r["loss"]) for r in read_metrics(run_dir / "metrics.jsonl") if r["split"] == split]


@pytest.mark.slow
def test_two_processes_match_one_process_and_restore_in_one(tmp_path, shared_data):
    cfg = str(REPO / "configs/lm_tiny.yaml")
    # A fresh token cache: both ranks prepare the corpus at once (one waits for the other's lock).
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu",
           "SCALING_JAX_CACHE": str(tmp_path / "cache")}
    worker = [sys.executable, str(REPO / "tests/feed_rows_worker.py")]  # train + a log of the rows read
    two, one = tmp_path / "two", tmp_path / "one"
    proc = subprocess.run(["bash", str(REPO / "launch/local.sh"), "2", cfg, f"run.dir={two}", *SMALL],
                          env={**env, "SCALING_JAX_CMD": " ".join(worker), "ROWS_LOG": str(tmp_path / "rows_two")},
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    subprocess.run([*worker, cfg, f"run.dir={one}", *SMALL], env={**env, "ROWS_LOG": str(tmp_path / "rows_one")},
                   check=True, capture_output=True, timeout=900)
    ranks = [json.loads((tmp_path / f"rows_two.{p}.json").read_text()) for p in (0, 1)]
    single = json.loads((tmp_path / "rows_one.0.json").read_text())
    assert [r["step"] for r in single] == [r["step"] for r in ranks[0]] == [r["step"] for r in ranks[1]] \
        == list(range(20))
    for s0, s1, ref in zip(*ranks, single):
        assert ref["rows"] == list(range(8)) and len(s0["rows"]) == len(s1["rows"]) == 4
        assert not set(s0["rows"]) & set(s1["rows"]), "the processes read disjoint rows"
        for key in ("examples", "first_tokens"):  # row by row, the union is the 1-process global batch
            got = dict(zip(s0["rows"] + s1["rows"], s0[key] + s1[key]))
            assert [got[r] for r in range(8)] == ref[key]
    assert len(list((tmp_path / "cache" / "tokens").glob("*/index.json"))) == 2  # train + valid, prepared once
    a, b = _losses(two, "train"), _losses(one, "train")
    assert [s for s, _ in a] == [s for s, _ in b] == list(range(1, 21))
    np.testing.assert_allclose([l for _, l in a], [l for _, l in b], atol=1e-5, rtol=0)
    out = subprocess.run([sys.executable, "-m", "scaling_jax.cli", "eval", cfg, f"run.dir={two}", *SMALL],
                         env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stderr[-3000:]
    valid = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")][0]
    assert valid["from_step"] == 20
    assert abs(valid["loss"] - _losses(two, "eval")[-1][1]) < 1e-5
