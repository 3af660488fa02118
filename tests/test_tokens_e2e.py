"""Training on a prepared corpus (data.kind=tokens) end to end: `scaling-jax prepare`, kill -9
twice, rerun, every logged loss equal to an uninterrupted run's. (Two processes reading disjoint
rows: tests/test_multihost_e2e.py.)"""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

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
