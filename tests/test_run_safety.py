"""Nothing lost, nothing silent: a NaN stop commits the save in flight, a refused run writes nothing,
one trainer per run directory, a torn metrics line, every checkpoint unreadable -> one line."""
import json
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import jax
import numpy as np
import pytest

from scaling_jax.config import load_config
from scaling_jax.errors import CheckpointMismatchError, MeshError, NonFiniteLossError, RunDirLockedError
from scaling_jax.metrics_log import read_metrics
from scaling_jax.rundir import RunDirLock

REPO = Path(__file__).resolve().parents[1]
SMALL = ["data.train=[shakespeare/sonnets_gut.txt]", "data.valid=[shakespeare/lovers_complaint_gut.txt]",
         "model.d_model=32", "model.n_layers=1", "model.n_heads=2", "model.max_len=32", "data.seq_len=32",
         "data.batch_size=8", "data.eval_batch_size=8", "data.max_eval_batches=2", "train.log_every=1"]


def _cfg(run_dir, *extra):
    return load_config(REPO / "configs/lm_tiny.yaml", [f"run.dir={run_dir}", *SMALL, *extra])


def _cli(run_dir, *extra):
    return [sys.executable, "-m", "scaling_jax.cli", "train", str(REPO / "configs/lm_tiny.yaml"),
            f"run.dir={run_dir}", *SMALL, *extra]


def _env():
    return {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=8", "JAX_PLATFORMS": "cpu"}


def _snapshot(run_dir: Path) -> dict[str, bytes]:
    """Every file of a run directory (checkpoints included) and its bytes."""
    return {str(p.relative_to(run_dir)): p.read_bytes() for p in sorted(run_dir.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """A finished 4-step run (checkpoints at 2 and 4, async saves), copied by the tests that change it."""
    from scaling_jax.train.loop import train
    run_dir = tmp_path_factory.mktemp("trained") / "run"
    train(_cfg(run_dir, "train.steps=4", "checkpoint.every=2", "train.eval_every=4"))
    return run_dir


def test_a_refused_resume_leaves_every_file_of_the_run_byte_identical(trained, tmp_path):
    from scaling_jax.train.loop import train
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = _snapshot(run_dir)
    assert {"config.yaml", "labels.json", "metrics.jsonl", "result.json"} <= set(before)
    refusals = [(["model.d_model=64", "model.n_heads=2"], CheckpointMismatchError, "does not match the state"),
                (["optim.lr=0.1"], CheckpointMismatchError, "written by a different config"),
                (["mesh.data=3"], MeshError, "mesh")]
    for overrides, error, text in refusals:
        with pytest.raises(error, match=text):
            train(_cfg(run_dir, "train.steps=6", "checkpoint.every=2", "train.eval_every=4", *overrides))
        assert _snapshot(run_dir) == before, overrides  # config.yaml, labels.json, metrics, checkpoints
    # A refused fresh run leaves no directory behind either.
    with pytest.raises(MeshError):
        train(_cfg(tmp_path / "fresh", "mesh.data=3"))
    assert not (tmp_path / "fresh").exists()


def test_a_second_trainer_is_refused_at_once_naming_the_holder(trained, tmp_path):
    from scaling_jax.train.loop import train
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    before = _snapshot(run_dir)
    with RunDirLock(run_dir):  # as a running trainer holds it
        t0 = time.perf_counter()
        with pytest.raises(RunDirLockedError, match=rf"in use by pid {os.getpid()} on host "):
            train(_cfg(run_dir, "train.steps=6", "checkpoint.every=2", "train.eval_every=4"))
        assert time.perf_counter() - t0 < 5, "refused before building anything"
    assert _snapshot(run_dir) == {**before, ".lock": b""}  # released: no holder recorded


def test_a_torn_last_metrics_line_is_dropped_with_a_warning_and_the_run_resumes(trained, tmp_path, caplog):
    from scaling_jax.train.loop import train
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    metrics = run_dir / "metrics.jsonl"
    rows = read_metrics(metrics)
    with metrics.open("a") as f:
        f.write('{"step": 5, "split": "train", "lo')  # a write cut short (disk full, kill -9)
    with caplog.at_level("WARNING", logger="scaling_jax.metrics_log"):
        assert read_metrics(metrics) == rows
        train(_cfg(run_dir, "train.steps=6", "checkpoint.every=2", "train.eval_every=4"))
    assert f"{metrics}:{len(rows) + 1}: dropping a torn last line" in caplog.text
    resumed = read_metrics(metrics)
    assert resumed[:len(rows)] == rows
    assert [r["step"] for r in resumed if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]


def test_nan_stop_under_async_save_commits_the_named_step_and_a_rerun_resumes_from_it(
        tmp_path, shared_data, monkeypatch, capsys):
    import scaling_jax.train.loop as loop
    from orbax.checkpoint._src.path import atomicity

    real_open = loop.open_session

    def poisoned_open(cfg, **kw):
        session = real_open(cfg, **kw)
        step_fn = session.train_step

        def bad_step(state, batch):
            state, m = step_fn(state, batch)
            if int(state.step) >= 5:  # from step 5 on, the update blows up
                m = {**m, "train/loss": m["train/loss"] * np.nan, "train/finite": m["train/finite"] & False}
            return state, m
        session.train_step = bad_step
        return session

    # A slow disk: the commit of step 4 is still in flight when step 5's NaN is seen. Before,
    # train() raised right away, naming step 4 as kept while it was still a tmp directory (and
    # Orbax's commit then failed at interpreter shutdown).
    for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
        real_finalize = cls.finalize

        async def slow_finalize(self, *args, _real=real_finalize, **kwargs):
            time.sleep(3)
            return await _real(self, *args, **kwargs)
        monkeypatch.setattr(cls, "finalize", slow_finalize)
    monkeypatch.setattr(loop, "open_session", poisoned_open)
    run_dir = tmp_path / "run"
    args = ["train.steps=8", "checkpoint.every=4", "train.eval_every=100"]
    with pytest.raises(NonFiniteLossError, match=r"non-finite training loss \(nan\) at step 5; the last good "
                                                 r"checkpoint \(step 4\) is kept"):
        loop.train(_cfg(run_dir, *args))
    ckpts = run_dir / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["4"], "step 4 committed before the error left train()"
    monkeypatch.undo()
    capsys.readouterr()
    result = loop.train(_cfg(run_dir, *args))
    assert "resumed from step 4" in capsys.readouterr().out
    assert result["final_step"] == 8


def test_the_nan_message_says_when_no_checkpoint_is_kept_and_which_value_is_not_finite(tmp_path):
    from scaling_jax.checkpoint import Checkpointer
    from scaling_jax.train.loop import _kept, _non_finite
    with Checkpointer(tmp_path / "checkpoints", every=1) as ckpt:
        assert _kept(ckpt) == (f"no checkpoint was committed yet in {ckpt.directory}, so a rerun starts from "
                               f"scratch")  # was: "the last good checkpoint (step None) is kept"
    assert _non_finite({"train/loss": float("nan"), "train/grad_norm": 1.0}) == "non-finite training loss (nan)"
    assert _non_finite({"train/loss": 7.6e17, "train/grad_norm": float("inf")}) == (
        "non-finite gradient norm (inf; the loss was 7.6e+17)")


@pytest.mark.slow
def test_two_trainers_started_together_one_is_refused_and_no_metric_row_is_doubled(tmp_path, shared_data):
    run_dir = tmp_path / "run"
    cmd = _cli(run_dir, "train.steps=6", "checkpoint.every=2", "train.eval_every=3")
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], [o[1][-2000:] for o in outs]
    refused = outs[[p.returncode for p in procs].index(2)][1]
    assert "error:" in refused and "in use by pid" in refused and "Traceback" not in refused
    rows = read_metrics(run_dir / "metrics.jsonl")
    counts = Counter((r["step"], r["split"]) for r in rows)
    assert max(counts.values()) == 1, counts
    assert [r["step"] for r in rows if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert sorted(p.name for p in (run_dir / "checkpoints").iterdir()) == ["4", "6"]


@pytest.mark.slow
def test_when_every_checkpoint_is_unreadable_train_exits_2_with_one_line(trained, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(trained, run_dir)
    for meta in (run_dir / "checkpoints").glob("*/state/_METADATA"):
        meta.unlink()
    before = _snapshot(run_dir)
    out = subprocess.run(_cli(run_dir, "train.steps=6", "checkpoint.every=2", "train.eval_every=4"), env=_env(),
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 2, out.stderr[-3000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr[-3000:]
    assert lines[0].startswith("scaling-jax train: error: ") and "none readable" in lines[0]
    assert "step 2: state metadata missing" in lines[0] and "step 4: state metadata missing" in lines[0]
    assert _snapshot(run_dir) == before
