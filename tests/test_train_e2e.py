"""`scaling-jax train` end to end on lm_tiny (shrunk): contract files, exact resume after kill -9,
SIGTERM, NaN guard, restore onto another mesh."""
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from scaling_jax.config import load_config
from scaling_jax.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.train=[shakespeare/sonnets_gut.txt]", "data.valid=[shakespeare/lovers_complaint_gut.txt]",
         "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_len=32", "data.seq_len=32",
         "data.batch_size=8", "data.eval_batch_size=8", "data.max_eval_batches=2", "train.log_every=1"]


def _cmd(run_dir, *extra):
    return [sys.executable, "-m", "scaling_jax.cli", "train", str(REPO / "configs/lm_tiny.yaml"),
            f"run.dir={run_dir}", *SMALL, *extra]


def _env():
    env = dict(os.environ)
    env["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    env["JAX_PLATFORMS"] = "cpu"
    return env


def _train_losses(run_dir):
    return [(r["step"], r["loss"]) for r in read_metrics(Path(run_dir) / "metrics.jsonl") if r["split"] == "train"]


def test_train_writes_the_contract_files(tmp_path, shared_data):
    from scaling_jax.train.loop import train
    cfg = load_config(REPO / "configs/lm_tiny.yaml", [f"run.dir={tmp_path}", *SMALL, "train.steps=6",
                                                       "train.eval_every=3", "checkpoint.every=3"])
    result = train(cfg)
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "checkpoints").is_dir()
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert {r["split"] for r in rows} == {"train", "eval"}
    assert all({"step", "split", "loss"} <= set(r) for r in rows)
    assert [r["step"] for r in rows if r["split"] == "eval"] == [3, 6]
    # Every step logged (log_every=1) with its own throughput; the step of each save read 0.0.
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert all(r["tokens_per_s"] > 0 for r in rows if r["split"] == "train"), rows
    assert result["eval"]["loss"] < rows[0]["loss"], "eval loss after training below the first train loss"
    assert load_config(tmp_path / "config.yaml").train.steps == 6

    # Hand the model on: export to HF, fine-tune that GPT-2 checkpoint as a causal LM, generate.
    from scaling_jax.train.session import export_run
    export_run(tmp_path, tmp_path / "export")
    export_run(tmp_path, tmp_path / "export")  # its own earlier export is replaced
    tuned = tmp_path / "tuned"
    result2 = train(load_config(REPO / "configs/lm_finetune.yaml", [
        f"run.dir={tuned}", f"model.pretrained={tmp_path / 'export'}", "train.steps=2", "train.eval_every=2",
        "checkpoint.every=2", "data.seq_len=32", "data.batch_size=8", "data.eval_batch_size=8",
        "data.max_eval_batches=2"]))
    assert result2["eval"]["loss"] < 20
    for flags in (["--top-k", "0"], ["--top-k", "5", "--top-p", "0.9", "--seed", "1"]):
        out = subprocess.run([sys.executable, "-m", "scaling_jax.cli", "predict", str(tuned), "--text", "ROMEO:",
                              "--max-new-tokens", "5", *flags], env=_env(), capture_output=True, text=True,
                             timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
        row = json.loads(out.stdout.strip().splitlines()[-1])
        assert row["prompt"] == "ROMEO:" and row["text"].startswith("ROMEO:") and len(row["text"]) > 6


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume_is_bit_identical(tmp_path, shared_data):
    steps = ["train.steps=16", "checkpoint.every=2", "train.eval_every=4"]
    ref_dir, run_dir = tmp_path / "ref", tmp_path / "killed"
    subprocess.run(_cmd(ref_dir, *steps), env=_env(), check=True, capture_output=True, timeout=600)
    rnd = random.Random(0)
    kills = 0
    for attempt in range(3):
        proc = subprocess.Popen(_cmd(run_dir, *steps), env=_env(), stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        ckpts = run_dir / "checkpoints"
        deadline = time.time() + 300
        during_save = attempt == 0
        while time.time() < deadline and proc.poll() is None:
            if during_save and ckpts.is_dir() and any("tmp" in p.name for p in ckpts.iterdir()):
                break  # kill while an async save is in flight
            if not during_save and ckpts.is_dir() and any(p.name.isdigit() for p in ckpts.iterdir()):
                time.sleep(rnd.uniform(0.0, 2.0))
                break
            time.sleep(0.005)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
    assert kills >= 2, "the run finished before it could be killed: make it longer"
    subprocess.run(_cmd(run_dir, *steps), env=_env(), check=True, capture_output=True, timeout=600)
    assert _train_losses(run_dir) == _train_losses(ref_dir)  # every logged loss, bit for bit
    a = json.loads((ref_dir / "result.json").read_text())
    b = json.loads((run_dir / "result.json").read_text())
    assert a["params_digest"] == b["params_digest"]
    assert a["eval"]["loss"] == b["eval"]["loss"]


@pytest.mark.slow
def test_sigterm_saves_and_exits_75_and_the_rerun_continues(tmp_path, shared_data):
    cmd = _cmd(tmp_path, "train.steps=400", "checkpoint.every=1000", "train.eval_every=1000")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    metrics = tmp_path / "metrics.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 3):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 75, out[-2000:]  # EX_TEMPFAIL: preempted, not finished (that is 0)
    assert "preempted: saved step" in out
    saved = [int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()]
    assert saved and max(saved) < 400
    rerun = subprocess.run(_cmd(tmp_path, "train.steps=" + str(max(saved) + 2), "checkpoint.every=1000",
                                "train.eval_every=1000"), env=_env(), capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"resumed from step {max(saved)}" in rerun.stdout


def test_nan_loss_stops_with_the_step_and_keeps_the_good_checkpoint(tmp_path, shared_data, monkeypatch):
    import scaling_jax.train.loop as loop
    from scaling_jax.errors import NonFiniteLossError
    from scaling_jax.train.session import open_session, restore_params

    real_open = loop.open_session

    def poisoned_open(cfg, **kw):
        session = real_open(cfg, **kw)
        step_fn = session.train_step

        def bad_step(state, batch):
            state, m = step_fn(state, batch)
            if int(state.step) >= 5:  # from step 5 on, the update blows up
                state = state.replace(params=jax.tree.map(lambda p: p * np.nan, state.params))
                m = {**m, "train/loss": m["train/loss"] * np.nan, "train/finite": m["train/finite"] & False}
            return state, m
        session.train_step = bad_step
        return session

    monkeypatch.setattr(loop, "open_session", poisoned_open)
    cfg = load_config(REPO / "configs/lm_tiny.yaml", [f"run.dir={tmp_path}", *SMALL, "train.steps=10",
                                                       "checkpoint.every=4", "train.eval_every=100"])
    with pytest.raises(NonFiniteLossError, match=r"at step 5.*last good checkpoint \(step 4\)"):
        loop.train(cfg)
    session = open_session(cfg)
    step, params = restore_params(session, "latest")
    assert step == 4
    assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(params))


def test_restore_8_devices_onto_4_gives_the_same_eval_loss(tmp_path, shared_data):
    from scaling_jax.train.loop import train
    base = [f"run.dir={tmp_path}", *SMALL, "train.steps=4", "checkpoint.every=4", "train.eval_every=4"]
    result = train(load_config(REPO / "configs/lm_tiny.yaml", [*base, "mesh.data=2", "mesh.fsdp=2",
                                                                "mesh.tensor=2"]))
    env = {**_env(), "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    out = subprocess.run([sys.executable, "-m", "scaling_jax.cli", "eval", str(REPO / "configs/lm_tiny.yaml"),
                          *base, "mesh.data=4", "mesh.fsdp=1", "mesh.tensor=1"],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    valid = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")][0]
    assert valid["split"] == "valid" and valid["from_step"] == 4
    assert abs(valid["loss"] - result["eval"]["loss"]) < 1e-5
