"""Optimizer and learning-rate schedule from config (optax), with freeze masks applied."""
from __future__ import annotations

import re
from typing import Any

import optax

from scaling_jax.config import OptimConfig
from scaling_jax.train.freeze import make_optimizer_with_freeze
from scaling_jax.train.mup import mup_partition
from scaling_jax.train.stacked import stack_layers as stacked
from scaling_jax.tree import map_with_path_str

# HF/BERT convention: no weight decay on biases and layer-norm parameters.
_NO_DECAY = re.compile(r"(^|/)(bias|scale)$|LayerNorm|ln_")


def make_schedule(cfg: OptimConfig, total_steps: int, lr: float | None = None) -> optax.Schedule:
    """Linear warmup, then cosine / linear decay to `end_lr_ratio * lr` at `total_steps`, or constant."""
    peak = cfg.lr if lr is None else lr
    warmup = min(cfg.warmup_steps, max(total_steps - 1, 0))
    decay_steps = max(total_steps - warmup, 1)
    end = peak * cfg.end_lr_ratio
    if cfg.schedule == "constant":
        after = optax.constant_schedule(peak)
    elif cfg.schedule == "linear":
        after = optax.linear_schedule(peak, end, decay_steps)
    else:
        after = optax.cosine_decay_schedule(peak, decay_steps, alpha=cfg.end_lr_ratio)
    if warmup == 0:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), after], [warmup])


def decay_mask(params: Any) -> Any:
    """True for the leaves AdamW decays: not biases, LayerNorm scales or other norms."""
    return map_with_path_str(lambda name, _: not _NO_DECAY.search(name), params)


def make_optimizer(cfg: OptimConfig, total_steps: int, *, lr: float | None = None, freeze_labels: Any = None,
                   stack_layers: bool = False, hidden_lr_multiplier: float | None = None
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """clip -> adamw/sgd on a schedule; with `freeze_labels` ('train'/'frozen' per leaf), frozen
    leaves go through `optax.set_to_zero()` inside `optax.partition` and so carry no moments.
    `stack_layers` (on with `model.scan_layers`) updates same-shaped per-layer leaves stacked
    (train/stacked.py): same numbers, one update kernel per layer leaf kind instead of per layer.
    `hidden_lr_multiplier` (muP, train/mup.py): the hidden matrices get their own optimizer at the
    schedule times this, the rest the schedule itself; gradient clipping stays global."""
    schedule = make_schedule(cfg, total_steps, lr)

    def make_core(sched: optax.Schedule) -> optax.GradientTransformation:
        if cfg.name == "adamw":
            return optax.adamw(sched, b1=cfg.b1, b2=cfg.b2, eps=cfg.eps, weight_decay=cfg.weight_decay,
                               mask=decay_mask)
        return optax.sgd(sched, momentum=cfg.b1 or None)

    if hidden_lr_multiplier is None:
        core = make_core(schedule)
    else:
        core = mup_partition(make_core, schedule, hidden_lr_multiplier)
    tx = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), core) if cfg.clip_norm > 0 else core
    if stack_layers:
        tx = stacked(tx)
    if freeze_labels is not None:
        tx = make_optimizer_with_freeze(tx, freeze_labels)
    return tx, schedule
