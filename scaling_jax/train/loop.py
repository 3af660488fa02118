"""The fit loop: resume, jitted steps, eval cadence, early stopping, NaN guard, checkpoints, preemption."""
from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from tqdm.auto import tqdm

from scaling_jax import distributed
from scaling_jax.config import Config, config_text, to_dict
from scaling_jax.hostmem import release_free_memory
from scaling_jax.errors import (CheckpointMismatchError, ConfigError, NonFiniteLossError, RunDirLockedError,
                                ScalingJaxError)
from scaling_jax.metrics_log import MetricsWriter
from scaling_jax.preemption import EXIT_PREEMPTED, PreemptionGuard
from scaling_jax.rundir import RunDirLock, write_text_atomic
from scaling_jax.train.feed import BatchFeed
from scaling_jax.train.evaluate import evaluate
from scaling_jax.train.freeze import report_lines
from scaling_jax.train.session import make_checkpointer, open_session

log = logging.getLogger(__name__)


def config_hash(cfg: Config) -> str:
    d = to_dict(cfg)
    for k in ("run", "checkpoint", "mesh", "distributed"):  # may change on resume
        d.pop(k, None)
    d["train"].pop("steps", None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# Consecutive non-finite steps that `train.nan_policy=skip` tolerates before it stops: a skipped
# step leaves the state as it was, so a run that skips this many in a row is not recovering.
MAX_CONSECUTIVE_SKIPS = 10


def train(cfg: Config) -> dict[str, Any]:
    """Trains per `cfg` into `cfg.run_dir`; resumes from its latest good checkpoint. Returns the
    final metrics (eval, test, best) as a dict; `result["preempted"]` is the step saved when a
    stop signal ended the run early. Raises NonFiniteLossError on a NaN loss, RunDirLockedError
    while another trainer uses the run directory.

    Nothing in the run directory is written before the run is known to start (config valid,
    mesh fits, data loads, the checkpoint matches this config); on any exit the save in flight
    is committed first, and an error names the last committed step."""
    d = cfg.distributed
    distributed.initialize(coordinator=d.coordinator or None, num_processes=d.num_processes or None,
                           process_id=d.process_id if d.process_id >= 0 else None,
                           timeout_s=d.timeout_s or None)
    main = jax.process_index() == 0
    lock = RunDirLock(cfg.run_dir)
    refusal = None
    if main:  # one lock per run: process 0 holds it for all
        try:
            lock.acquire()
        except RunDirLockedError as e:
            refusal = e
    if jax.process_count() > 1:
        locked = bool(multihost_utils.broadcast_one_to_all(np.int32(refusal is None)))
        if not locked and refusal is None:
            refusal = RunDirLockedError(f"{cfg.run_dir}: process 0 could not lock the run directory")
    if refusal is not None:
        raise refusal
    try:
        return _train(cfg, main)
    finally:
        lock.release()


def _train(cfg: Config, main: bool) -> dict[str, Any]:
    run_dir = cfg.run_dir
    session = open_session(cfg)
    summary = session.summary()
    if main:
        print(f"[scaling_jax] {cfg.run.name}: {summary['params_total']:,} params, "
              f"{summary['params_trainable']:,} trainable, optimizer state "
              f"{summary['opt_state_bytes'] / 2**20:.1f} MiB, mesh {summary['mesh']}, "
              f"{len(session.data.train):,} train "
              f"{'rows (packed)' if 'segment_ids' in getattr(session.data.train, 'arrays', {}) else 'examples'}", flush=True)
        if session.trainable.report:
            for line in report_lines(session.trainable.report):
                print(f"[scaling_jax]   {line}", flush=True)
        if session.mup:
            m = session.mup
            print(f"[scaling_jax]   muP (base width {cfg.model.base_width}): {m['hidden_params']:,} hidden-matrix "
                  f"params at lr x {m['hidden_lr_multiplier']:.4g}, {m['base_params']:,} at lr", flush=True)
    ckpt = make_checkpointer(cfg)
    try:
        restored = ckpt.restore_latest(session.abstract_state)
        if restored is not None and restored.extra.get("config_hash") not in (None, config_hash(cfg)):
            raise CheckpointMismatchError(f"{run_dir}: checkpoint step {restored.step} was written by a "
                                          f"different config; use another run.dir")
    except BaseException:
        ckpt.close()
        raise
    # The run starts: only from here on does it write into run_dir.
    if main:
        write_text_atomic(run_dir / "config.yaml", config_text(cfg))
        write_text_atomic(run_dir / "labels.json", json.dumps(session.label_names))
    writer = MetricsWriter(run_dir, enabled=main)
    try:
        result = _fit(cfg, main, session, summary, ckpt, writer, restored)
    except BaseException as e:
        last = ckpt.last_committed_step()  # commit the save in flight before leaving
        where = (f"the last committed checkpoint is step {last} in {ckpt.directory}" if last is not None
                 else f"no checkpoint is committed in {ckpt.directory}")
        if isinstance(e, ScalingJaxError):  # one line for the user: say it in the error itself
            if not isinstance(e, NonFiniteLossError) and len(e.args) == 1:  # that one says it already
                e.args = (f"{e.args[0]}; {where}",)
        elif main:
            print(f"[scaling_jax] stopped by {type(e).__name__}; {where}", file=sys.stderr, flush=True)
        _close_quietly(ckpt)
        writer.close()
        raise
    ckpt.close()
    writer.close()
    return result


def _close_quietly(ckpt) -> None:
    """Closes the checkpointer while an error is raised: its own error must not hide that one."""
    try:
        ckpt.close()
    except Exception as e:  # noqa: BLE001 - already reported by last_committed_step
        log.debug("closing the checkpointer after an error: %s", e)


def _fit(cfg: Config, main: bool, session, summary: dict, ckpt, writer: MetricsWriter,
         restored) -> dict[str, Any]:
    """The loop proper, from the restored state (or a fresh one) to the final test eval."""
    run_dir = cfg.run_dir
    data, state, bsh, schedule = session.data, session.state, session.batch_sharding, session.schedule
    train_step, eval_step = session.train_step, session.eval_step
    abstract = session.abstract_state
    evaluate_valid = lambda st: evaluate(eval_step, st.params, data.valid, cfg, data, bsh)
    progress = {"best": None, "bad_evals": 0, "stopped_early": False, "tokens": 0}
    if restored is not None:
        step0, state, extra = restored
        progress.update(extra.get("progress", {}))
        writer.truncate_after(step0)
        if main:
            print(f"[scaling_jax] resumed from step {step0} in {ckpt.directory}", flush=True)
    else:
        step0 = 0
        writer.truncate_after(-1)
        if main:
            write_text_atomic(run_dir / "summary.json", json.dumps(summary, indent=1))
        if data.test is not None and cfg.model.task != "causal_lm":
            before = evaluate(eval_step, state.params, data.test, cfg, data, bsh)
            writer.write(0, "test", {"phase": "before", **before})
        if data.valid is not None and cfg.model.task == "causal_lm" and cfg.model.pretrained:
            # a pretrained LM's held-out loss before any update: what continued pretraining improves on
            writer.write(0, "eval", {"phase": "before", **evaluate_valid(state)})
    result: dict[str, Any] = {"summary": summary}
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    pending: tuple[int, Any] | None = None
    clock = {"step": step0, "time": time.perf_counter()}  # the last logged step and when it was known
    skips = {"run": 0, "total": 0}  # non-finite steps skipped (nan_policy=skip): in a row, in all
    bar = tqdm(total=cfg.train.steps, initial=step0, disable=not main, desc=cfg.run.name, dynamic_ncols=True)

    def check(step: int, metrics: Any) -> dict:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not m["train/finite"]:
            what = _non_finite(m)
            if cfg.train.nan_policy == "stop":
                raise NonFiniteLossError(f"{what} at step {step}; {_kept(ckpt)}")
            skips["run"] += 1
            skips["total"] += 1
            if skips["run"] >= MAX_CONSECUTIVE_SKIPS:
                raise NonFiniteLossError(
                    f"{what} at step {step}: {skips['run']} steps in a row skipped (train.nan_policy=skip "
                    f"stops after {MAX_CONSECUTIVE_SKIPS}); {_kept(ckpt)}")
        else:
            skips["run"] = 0
        result["train_loss"] = m["train/loss"]
        if m["train/finite"]:  # targets trained on (a step skipped by nan_policy=skip trains on none)
            progress["tokens"] = progress.get("tokens", 0) + int(m["train/tokens"])
        return m

    def log_train(step: int, m: dict) -> None:
        if step % cfg.train.log_every and step != cfg.train.steps:
            return
        now = time.perf_counter()
        # Tokens since the last logged step over the time since its metrics were read: each
        # step's metrics are read once its computation is done, so this is the steps' own time.
        tps = tokens_per_step * (step - clock["step"]) / max(now - clock["time"], 1e-9)
        clock.update(step=step, time=now)
        writer.write(step, "train", {"loss": m["train/loss"], "accuracy": m["train/accuracy"],
                                     "grad_norm": m["train/grad_norm"], "lr": float(schedule(step - 1)),
                                     "tokens_per_s": tps, "tflops_per_s": tps * summary["flops_per_token"] / 1e12,
                                     "finite": bool(m["train/finite"])})
        bar.set_postfix(loss=f"{m['train/loss']:.4f}", tok_s=f"{tps:,.0f}")
        release_free_memory()  # what a finished async save, or an eval, freed goes back to the OS

    feed = BatchFeed(data.train, cfg.data.batch_size, cfg.train.seed, bsh, step0, cfg.train.steps)
    with PreemptionGuard() as guard, feed:
        step = step0
        while step < cfg.train.steps and not progress["stopped_early"]:
            state, metrics = train_step(state, feed.get(step))
            step += 1
            bar.update(1)
            if step == step0 + 1:  # the compile's garbage goes back to the OS before the steps run
                jax.block_until_ready(metrics)
                release_free_memory()
            if pending is not None:  # read step-1's metrics only after step is dispatched
                log_train(pending[0], check(*pending))
            pending = (step, metrics)
            due_eval = data.valid is not None and (step % cfg.train.eval_every == 0 or step == cfg.train.steps)
            due_ckpt = step % ckpt.every == 0 or step == cfg.train.steps
            stop = guard.should_stop(step)
            if due_eval or due_ckpt or stop:
                log_train(pending[0], check(*pending))  # never save or eval an unchecked state
                pending = None
            eval_metrics = None
            if due_eval:
                eval_metrics = evaluate_valid(state)
                release_free_memory()  # the eval's buffers (and first compiles) are not the steps' memory
                writer.write(step, "eval", eval_metrics)
                result["eval"] = eval_metrics
                _early_stopping(cfg, progress, eval_metrics, step)
                if cfg.train.eval_test and data.test is not None:  # time to quality; never chooses anything
                    writer.write(step, "test", {"phase": "during",
                                                **evaluate(eval_step, state.params, data.test, cfg, data, bsh)})
            new_best = eval_metrics is not None and ckpt.best_k and progress.get("best_step") == step
            if due_ckpt or stop or progress["stopped_early"] or new_best:
                evals = {f"eval/{k}": v for k, v in (eval_metrics or {}).items() if isinstance(v, (int, float))}
                ckpt.save(step, state, force=True, metrics=evals or None,
                          extra={"data_step": step, "config_hash": config_hash(cfg), "progress": progress})
                release_free_memory()  # a synchronous save's buffers (an async one's: at the next log)
            if due_eval or due_ckpt:  # eval and save time is not the next steps' time
                clock["time"] = time.perf_counter()
            if stop:
                ckpt.wait()
                bar.close()
                if main:
                    print(f"[scaling_jax] preempted: saved step {step}; rerun the same command to resume "
                          f"(exit status {EXIT_PREEMPTED})", flush=True)
                result["preempted"] = step
                return result
        if pending is not None:
            log_train(pending[0], check(*pending))
    bar.close()
    ckpt.wait()
    if skips["total"] and skips["total"] == step - step0:
        raise NonFiniteLossError(f"train.nan_policy=skip: every one of the {skips['total']} steps had a non-finite "
                                 f"loss or gradient and was skipped; nothing was trained")
    if skips["total"]:
        log.warning("train.nan_policy=skip: %d of %d steps had a non-finite loss or gradient and were skipped",
                    skips["total"], step - step0)
    result["skipped_steps"] = skips["total"]
    result["final_step"] = step
    result["tokens"] = progress.get("tokens", 0)  # real target tokens trained on, over the whole run
    result["params_digest"] = params_digest(state.params)
    if data.test is not None:
        # Only one set of params stays alive for the test: the final state (optimizer included) is
        # freed before the best checkpoint is read, and kept only where there is no best one.
        best_saved = ckpt.best_k and progress.get("best_step") is not None
        final_params, state = (None if best_saved else state.params), None
        release_free_memory()
        best = ckpt.restore_best(abstract) if ckpt.best_k else None
        if best is None and best_saved:  # the best became unreadable: the final step was saved too
            best = ckpt.restore_latest(abstract)
        from_step, test_params = (step, final_params) if best is None else (best[0], best[1].params)
        best = final_params = None
        test_metrics = evaluate(eval_step, test_params, data.test, cfg, data, bsh)
        tag = {"phase": "after", "from_step": from_step}
        writer.write(step, "test", {**tag, **test_metrics})
        result["test"] = {**tag, **test_metrics}
        if main and "report" in test_metrics:
            print(test_metrics["report"], flush=True)
    result["best"] = progress.get("best")
    if main:
        write_text_atomic(run_dir / "result.json", json.dumps(result, indent=1, default=str))
    return result


def _non_finite(m: dict) -> str:
    """Which training value is not finite: the loss, or (with a finite loss) the gradient norm."""
    if not np.isfinite(m["train/loss"]):
        return f"non-finite training loss ({m['train/loss']})"
    return f"non-finite gradient norm ({m['train/grad_norm']}; the loss was {m['train/loss']:.6g})"


def _kept(ckpt) -> str:
    """The truth about what a rerun resumes from, once the save in flight has committed."""
    last = ckpt.last_committed_step()
    if last is None:
        return f"no checkpoint was committed yet in {ckpt.directory}, so a rerun starts from scratch"
    return f"the last good checkpoint (step {last}) is kept in {ckpt.directory}"


def _early_stopping(cfg: Config, progress: dict, eval_metrics: dict, step: int) -> None:
    key = cfg.train.early_stopping_metric
    if not key:
        return
    name = key.split("/", 1)[-1]
    if name not in eval_metrics:
        raise ConfigError(f"train.early_stopping_metric={key!r} is not an eval metric; have "
                       f"{', '.join('eval/' + k for k in eval_metrics)}")
    value, best = float(eval_metrics[name]), progress["best"]
    better = best is None or (value > best if cfg.train.early_stopping_mode == "max" else value < best)
    if better:
        progress.update(best=value, best_step=step, bad_evals=0)
    else:
        progress["bad_evals"] += 1
        if cfg.train.patience and progress["bad_evals"] >= cfg.train.patience:
            progress["stopped_early"] = True



def params_digest(params: Any) -> str | None:
    """SHA-256 over every parameter's bytes (path order): bit-identical runs have equal digests."""
    leaves = jax.tree.leaves(params)
    if not all(x.is_fully_addressable for x in leaves):
        return None
    h = hashlib.sha256()
    for x in jax.device_get(leaves):
        h.update(np.ascontiguousarray(x).tobytes())
    return h.hexdigest()
