"""Training on a prepared corpus (data.kind=tokens) end to end: kill -9 twice, rerun, every logged
loss equal to an uninterrupted run's; 2 processes under launch/local.sh read disjoint rows whose
union is the global batch, with the losses of 1 process on the same devices."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from scaling_jax.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
CONFIG = str(REPO / "configs/lm_tiny.yaml")
SMALL = ["data.train=[shakespeare/sonnets_gut.txt, shakespeare/lovers_complaint_gut.txt]", "data.valid=[]",
         "data.valid_documents=1", "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_len=32",
         "data.seq_len=32", "data.batch_size=8", "data.eval_batch_size=8", "data.max_eval_batches=2",
         "train.log_every=1"]


def _env(**extra):
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu", **extra}


def _prepared(tmp_path):
    """`scaling-jax prepare` on the config: the kind=tokens overrides that read its output."""
    kind = ["data.kind=tokens", f"data.prepared={tmp_path / 'prepared'}"]
    out = subprocess.run([sys.executable, "-m", "scaling_jax.cli", "prepare", CONFIG, *SMALL, *kind], env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    line = json.loads(out.stdout.strip().splitlines()[-1])
    assert line["split"] == "train" and line["documents"] == 2
    return [*SMALL, *kind]


def _cmd(run_dir, overrides, *extra):
    return [sys.executable, "-m", "scaling_jax.cli", "train", CONFIG, f"run.dir={run_dir}", *overrides, *extra]


def _losses(run_dir, split="train"):
    return [(r["step"], r["loss"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["split"] == split]


@pytest.mark.slow
def test_kill_9_twice_on_a_prepared_corpus_then_resume_logs_the_same_losses(tmp_path, shared_data):
    overrides = _prepared(tmp_path)
    steps = ["train.steps=16", "checkpoint.every=2", "train.eval_every=4"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(ref_dir, overrides, *steps), env=_env(), check=True, capture_output=True, timeout=600)
    rnd = random.Random(1)
    kills = 0
    for _ in range(2):
        proc = subprocess.Popen(_cmd(run_dir, overrides, *steps), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ckpts = run_dir / "checkpoints"
        seen = max((int(p.name) for p in ckpts.iterdir() if p.name.isdigit()), default=0) if ckpts.is_dir() else 0
        deadline = time.time() + 300
        while time.time() < deadline and proc.poll() is None:  # a new checkpoint, then a random moment
            if ckpts.is_dir() and any(p.name.isdigit() and int(p.name) > seen for p in ckpts.iterdir()):
                time.sleep(rnd.uniform(0.0, 1.5))
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills == 2, "the run finished before it was killed twice: make it longer"
    subprocess.run(_cmd(run_dir, overrides, *steps), env=_env(), check=True, capture_output=True, timeout=600)
    assert _losses(run_dir) == _losses(ref_dir)  # every logged loss, bit for bit
    assert [s for s, _ in _losses(run_dir)] == list(range(1, 17))
    assert _losses(run_dir, "eval") == _losses(ref_dir, "eval")
    a = json.loads((ref_dir / "result.json").read_text())
    b = json.loads((run_dir / "result.json").read_text())
    assert a["params_digest"] == b["params_digest"]
    assert a["tokens"] == b["tokens"] == 16 * 8 * 31  # targets trained on, counted across the kills


@pytest.mark.slow
def test_two_processes_read_disjoint_rows_whose_union_is_the_global_batch(tmp_path, shared_data):
    overrides = [*_prepared(tmp_path), "train.steps=6", "checkpoint.every=6", "train.eval_every=6",
                 "mesh.data=2", "mesh.fsdp=2", "mesh.tensor=2"]
    worker = f"{sys.executable} {REPO / 'tests/feed_rows_worker.py'}"
    two, one = tmp_path / "two", tmp_path / "one"
    proc = subprocess.run(["bash", str(REPO / "launch/local.sh"), "2", CONFIG, f"run.dir={two}", *overrides],
                          env=_env(SCALING_JAX_CMD=worker, ROWS_LOG=str(tmp_path / "rows_two")),
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    subprocess.run([sys.executable, str(REPO / "tests/feed_rows_worker.py"), CONFIG, f"run.dir={one}", *overrides],
                   env=_env(ROWS_LOG=str(tmp_path / "rows_one")), check=True, capture_output=True, timeout=900)
    logs = [json.loads((tmp_path / f"rows_two.{p}.json").read_text()) for p in (0, 1)]
    single = {r["step"]: r for r in json.loads((tmp_path / "rows_one.0.json").read_text())}
    assert sorted(single) == list(range(6)) and single[0]["rows"] == list(range(8))
    for p in (0, 1):
        assert [r["step"] for r in logs[p]] == list(range(6))
    for step in range(6):
        a, b = logs[0][step], logs[1][step]
        assert len(a["rows"]) == len(b["rows"]) == 4 and not set(a["rows"]) & set(b["rows"])
        got = dict(zip(a["rows"] + b["rows"], a["examples"] + b["examples"]))
        assert [got[r] for r in range(8)] == single[step]["examples"]  # the union is the global batch
        tokens = dict(zip(a["rows"] + b["rows"], a["first_tokens"] + b["first_tokens"]))
        assert [tokens[r] for r in range(8)] == single[step]["first_tokens"]
    x, y = _losses(two), _losses(one)
    assert [s for s, _ in x] == [s for s, _ in y] == list(range(1, 7))
    np.testing.assert_allclose([l for _, l in x], [l for _, l in y], atol=1e-5, rtol=0)
