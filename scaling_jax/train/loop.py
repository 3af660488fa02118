"""The fit loop: resume, jitted steps, eval cadence, early stopping, NaN guard, checkpoints, preemption."""
from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import jax
import numpy as np
from tqdm.auto import tqdm

from scaling_jax import distributed
from scaling_jax.config import Config, dump_config, to_dict
from scaling_jax.data.sampler import batch_indices
from scaling_jax.errors import CheckpointMismatchError, ConfigError, NonFiniteLossError
from scaling_jax.metrics_log import MetricsWriter
from scaling_jax.preemption import PreemptionGuard
from scaling_jax.train.batches import global_batch
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


def train(cfg: Config) -> dict[str, Any]:
    """Trains per `cfg` into `cfg.run_dir`; resumes from its latest good checkpoint. Returns the
    final metrics (eval, test, best) as a dict. Raises NonFiniteLossError on a NaN loss."""
    d = cfg.distributed
    distributed.initialize(coordinator=d.coordinator or None, num_processes=d.num_processes or None,
                           process_id=d.process_id if d.process_id >= 0 else None,
                           timeout_s=d.timeout_s or None)
    main = jax.process_index() == 0
    run_dir = cfg.run_dir
    if main:
        run_dir.mkdir(parents=True, exist_ok=True)
        dump_config(cfg, run_dir / "config.yaml")
    session = open_session(cfg)
    data, state, bsh, schedule = session.data, session.state, session.batch_sharding, session.schedule
    train_step, eval_step = session.train_step, session.eval_step
    summary = session.summary()
    if main:
        (run_dir / "labels.json").write_text(json.dumps(session.label_names))
        print(f"[scaling_jax] {cfg.run.name}: {summary['params_total']:,} params, "
              f"{summary['params_trainable']:,} trainable, optimizer state "
              f"{summary['opt_state_bytes'] / 2**20:.1f} MiB, mesh {summary['mesh']}, "
              f"{len(data.train):,} train {'rows (packed)' if 'segment_ids' in data.train.arrays else 'examples'}",
              flush=True)
        if session.trainable.report:
            for line in report_lines(session.trainable.report):
                print(f"[scaling_jax]   {line}", flush=True)
        if session.mup:
            m = session.mup
            print(f"[scaling_jax]   muP (base width {cfg.model.base_width}): {m['hidden_params']:,} hidden-matrix "
                  f"params at lr x {m['hidden_lr_multiplier']:.4g}, {m['base_params']:,} at lr", flush=True)
    ckpt = make_checkpointer(cfg)
    writer = MetricsWriter(run_dir, enabled=main)
    abstract = session.abstract_state
    restored = ckpt.restore_latest(abstract)
    progress = {"best": None, "bad_evals": 0, "stopped_early": False}
    if restored is not None:
        step0, state, extra = restored
        if extra.get("config_hash") not in (None, config_hash(cfg)):
            raise CheckpointMismatchError(f"{run_dir}: checkpoint step {step0} was written by a different "
                                          f"config; use another run.dir")
        progress.update(extra.get("progress", {}))
        writer.truncate_after(step0)
        if main:
            print(f"[scaling_jax] resumed from step {step0} in {ckpt.directory}", flush=True)
    else:
        step0 = 0
        writer.truncate_after(-1)
        if main:
            (run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        if data.test is not None and cfg.model.task != "causal_lm":
            before = evaluate(eval_step, state.params, data.test, cfg, data, bsh)
            writer.write(0, "test", {"phase": "before", **before})

    evaluate_valid = lambda st: evaluate(eval_step, st.params, data.valid, cfg, data, bsh)
    result: dict[str, Any] = {"summary": summary}
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    pending: tuple[int, Any] | None = None
    t_last, steps_since = time.perf_counter(), 0
    bar = tqdm(total=cfg.train.steps, initial=step0, disable=not main, desc=cfg.run.name, dynamic_ncols=True)

    def check(step: int, metrics: Any) -> dict:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not m["train/finite"] and cfg.train.nan_policy == "stop":
            raise NonFiniteLossError(
                f"non-finite training loss ({m['train/loss']}) at step {step}; the last good checkpoint "
                f"(step {ckpt.latest_step()}) is kept in {ckpt.directory}")
        result["train_loss"] = m["train/loss"]
        return m

    def log_train(step: int, m: dict) -> None:
        nonlocal t_last, steps_since
        if step % cfg.train.log_every and step != cfg.train.steps:
            return
        now = time.perf_counter()
        tps = tokens_per_step * steps_since / max(now - t_last, 1e-9)
        t_last, steps_since = now, 0
        writer.write(step, "train", {"loss": m["train/loss"], "accuracy": m["train/accuracy"],
                                     "grad_norm": m["train/grad_norm"], "lr": float(schedule(step - 1)),
                                     "tokens_per_s": tps, "tflops_per_s": tps * summary["flops_per_token"] / 1e12,
                                     "finite": bool(m["train/finite"])})
        bar.set_postfix(loss=f"{m['train/loss']:.4f}", tok_s=f"{tps:,.0f}")

    with PreemptionGuard() as guard:
        step = step0
        while step < cfg.train.steps and not progress["stopped_early"]:
            idx = batch_indices(step, cfg.data.batch_size, len(data.train), cfg.train.seed)
            state, metrics = train_step(state, global_batch(data.train, idx, bsh))
            step += 1
            steps_since += 1
            bar.update(1)
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
                writer.write(step, "eval", eval_metrics)
                result["eval"] = eval_metrics
                _early_stopping(cfg, progress, eval_metrics, step)
            new_best = eval_metrics is not None and ckpt.best_k and progress.get("best_step") == step
            if due_ckpt or stop or progress["stopped_early"] or new_best:
                evals = {f"eval/{k}": v for k, v in (eval_metrics or {}).items() if isinstance(v, (int, float))}
                ckpt.save(step, state, force=True, metrics=evals or None,
                          extra={"data_step": step, "config_hash": config_hash(cfg), "progress": progress})
            if stop:
                ckpt.wait()
                bar.close()
                if main:
                    print(f"[scaling_jax] preempted: saved step {step}; rerun the same command to resume",
                          flush=True)
                result["preempted"] = step
                return result
        if pending is not None:
            log_train(pending[0], check(*pending))
    bar.close()
    ckpt.wait()
    result["final_step"] = step
    result["params_digest"] = params_digest(state.params)
    if data.test is not None:
        best = ckpt.restore_best(abstract) if ckpt.best_k else None
        test_params = best[1].params if best is not None else state.params
        test_metrics = evaluate(eval_step, test_params, data.test, cfg, data, bsh)
        tag = {"phase": "after", "from_step": best[0] if best is not None else step}
        writer.write(step, "test", {**tag, **test_metrics})
        result["test"] = {**tag, **test_metrics}
        if main and "report" in test_metrics:
            print(test_metrics["report"], flush=True)
    result["best"] = progress.get("best")
    ckpt.close()
    writer.close()
    if main:
        (run_dir / "result.json").write_text(json.dumps(result, indent=1, default=str))
    return result


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
