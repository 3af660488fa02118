"""Size sweeps: one recipe trained over a GPT width family (at one token count, at IsoFLOP budgets, or over a
learning-rate grid), collected into results.csv, then fitted and plotted."""
from __future__ import annotations

import csv
import dataclasses
import json
import logging
from pathlib import Path
from typing import Any, Callable

from scaling_jax.errors import ConfigError
from scaling_jax.scaling import fit_cli
from scaling_jax.scaling.family import gpt2_flops_per_token, gpt2_params
from scaling_jax.scaling.lr_sweep import best_learning_rates, lr_table
from scaling_jax.scaling.plots import plot_lr_sweep
from scaling_jax.train.loop import train

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("name", "d_model", "n_layers", "n_heads", "params", "params_total", "tokens", "flops",
                  "budget", "steps", "lr", "parametrization", "loss", "train_loss")
MIN_ISOFLOP_SIZES = 3  # a budget's parabola in log N needs three sizes


def _depth(s, d: int) -> int:
    return s.n_layers or max(1, round(d / s.aspect_ratio))


def _budget_steps(cfg, d: int, n_layers: int, budget: float) -> int:
    """Steps whose tokens x FLOPs per token (the project's one count, `gpt2_flops_per_token`) come
    nearest the budget."""
    m = cfg.model
    per_token = gpt2_flops_per_token(m.vocab_size, d, n_layers, cfg.data.seq_len, m.d_ff or None)
    return round(budget / (per_token * cfg.data.batch_size * cfg.data.seq_len))


def _plan(cfg) -> list[tuple[float | None, int, int, int]]:
    """(budget or None, d_model, n_layers, steps) of every run before learning rates: each width at
    sweep.tokens, or at each budget the widths whose steps lie within sweep.min_steps and
    sweep.max_tokens (a width outside them does not meet that budget and is left out)."""
    s = cfg.sweep
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    if not s.budgets:
        steps = s.tokens // tokens_per_step if s.tokens else cfg.train.steps
        if steps <= 0:
            raise ConfigError(f"sweep.tokens={s.tokens} is less than one step of {tokens_per_step} tokens")
        return [(None, d, _depth(s, d), steps) for d in s.widths]
    plan = []
    for budget in s.budgets:
        fits, misses = [], []
        for d in s.widths:
            n_layers = _depth(s, d)
            steps = _budget_steps(cfg, d, n_layers, budget)
            too_many = s.max_tokens and steps * tokens_per_step > s.max_tokens
            (misses if steps < s.min_steps or too_many else fits).append((d, n_layers, steps))
        if len(fits) < MIN_ISOFLOP_SIZES:
            detail = ", ".join(f"d{d}: {st} steps" for d, _, st in misses)
            raise ConfigError(
                f"sweep.budgets: {budget:.3g} FLOPs is met by {len(fits)} of the widths within sweep.min_steps="
                f"{s.min_steps} and sweep.max_tokens={s.max_tokens or 'none'} ({tokens_per_step} tokens a step; "
                f"{detail}); an IsoFLOP profile needs {MIN_ISOFLOP_SIZES}: change the budget, the widths or the "
                f"limits")
        plan += [(budget, d, n_layers, steps) for d, n_layers, steps in fits]
    return plan


def member_configs(cfg) -> list:
    """One Config per run: every width in `sweep.widths` (depth `sweep.n_layers`, else width /
    aspect_ratio, at least 1; heads of `head_dim`) at sweep.tokens, or at every budget of
    `sweep.budgets` it can meet (`_plan`); each at every learning rate of `sweep.lr_grid` (else
    optim.lr by `sweep.lr_rule`). Under muP, model.base_width stays as configured: the members'
    hidden learning rates scale from it."""
    s = cfg.sweep
    if not s.widths:
        raise ConfigError("sweep.widths: list at least one model width")
    for d in s.widths:
        if d % s.head_dim:
            raise ConfigError(f"sweep.widths: {d} is not a multiple of sweep.head_dim={s.head_dim}")
    data = cfg.data
    if data.bpe_vocab and not data.tokenizer:  # one tokenizer for every member, trained once
        data = dataclasses.replace(data, tokenizer=str(cfg.run_dir / "tokenizer"))
    out = []
    for budget, d, n_layers, steps in _plan(cfg):
        rates = s.lr_grid or (cfg.optim.lr * (s.base_width / d if s.lr_rule == "inverse_width" else 1.0),)
        for lr in rates:
            name = (f"c{budget:.0e}_".replace("+", "") if budget else "") + f"d{d}_l{n_layers}"
            name += f"_lr{lr:g}" if s.lr_grid else ""
            out.append(dataclasses.replace(
                cfg,
                run=dataclasses.replace(cfg.run, name=name, dir=str(cfg.run_dir / "members" / name)),
                model=dataclasses.replace(cfg.model, d_model=d, n_layers=n_layers, n_heads=d // s.head_dim),
                data=data,
                train=dataclasses.replace(cfg.train, steps=steps, eval_every=steps),
                optim=dataclasses.replace(cfg.optim, lr=lr),
                checkpoint=dataclasses.replace(cfg.checkpoint, every=cfg.checkpoint.every or steps),
                sweep=dataclasses.replace(s, budgets=(budget,) if budget else ()),
            ))
    return out


def _row(member, result: dict) -> dict[str, Any]:
    summary = result["summary"]
    m = member.model
    seq = member.data.seq_len
    # Kaplan et al. (2020): N excludes embeddings; FLOPs are the project's one count (scaling_jax.flops).
    params = gpt2_params(m.vocab_size, m.max_len, m.d_model, m.n_layers, m.d_ff or None, embeddings=False)
    if gpt2_params(m.vocab_size, m.max_len, m.d_model, m.n_layers, m.d_ff or None) != summary["params_total"]:
        raise RuntimeError(f"{member.run.name}: the model has {summary['params_total']} params, the "
                           f"family formula says otherwise")
    # D = the tokens actually trained on: real (non-padding) target tokens of the steps that updated
    # the model, as the train step counts them (`train/tokens`); a full causal-LM window of L tokens
    # has L - 1 targets. An older result.json without the count falls back to what the steps planned.
    tokens = result.get("tokens") or member.train.steps * member.data.batch_size * (seq - 1)
    flops = gpt2_flops_per_token(m.vocab_size, m.d_model, m.n_layers, seq, m.d_ff or None) * tokens
    return {"name": member.run.name, "d_model": m.d_model, "n_layers": m.n_layers, "n_heads": m.n_heads,
            "params": params, "params_total": summary["params_total"], "tokens": tokens, "flops": flops,
            "budget": member.sweep.budgets[0] if member.sweep.budgets else "",
            "steps": member.train.steps, "lr": member.optim.lr, "parametrization": m.parametrization,
            "loss": result["eval"]["loss"], "train_loss": result.get("train_loss", "")}


def run_sweep(cfg, train_fn: Callable | None = None) -> Path | None:
    """Trains each member in sequence (or only `sweep.member`), skipping finished ones, writes
    `results.csv`, then fits and plots when every member is done. Returns the CSV path, or None
    when a stop signal preempted a member (it is saved; a rerun resumes it)."""
    train_fn = train_fn or train
    members = member_configs(cfg)
    chosen = members if cfg.sweep.member < 0 else [members[cfg.sweep.member]]
    for member in chosen:
        done = member.run_dir / "result.json"
        if done.is_file() and "eval" in json.loads(done.read_text()):
            print(f"[sweep] {member.run.name}: done already, skipped", flush=True)
            continue
        print(f"[sweep] {member.run.name}: {member.train.steps} steps at lr {member.optim.lr:g}", flush=True)
        if "preempted" in (train_fn(member) or {}):  # a stand-in train_fn may return nothing
            print(f"[sweep] {member.run.name}: preempted; rerun the sweep to resume it", flush=True)
            return None
    rows = []
    for member in members:
        done = member.run_dir / "result.json"
        if done.is_file():
            rows.append(_row(member, json.loads(done.read_text())))
    out = Path(cfg.sweep.results) if cfg.sweep.results else cfg.run_dir / "results.csv"
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=RESULT_COLUMNS)
        w.writeheader()
        w.writerows(rows)
    print(f"[sweep] {len(rows)}/{len(members)} members in {out}", flush=True)
    if len(rows) == len(members) and len(rows) >= 3:
        analyse(cfg, out, rows)
    return out


def analyse(cfg, out: Path, rows: list[dict]) -> None:
    """After the last member: a learning-rate grid gets loss against learning rate per width
    (lr_sweep.json, lr_sweep.png); IsoFLOP budgets get approaches 1-3 side by side on the sweep's
    own FLOP counts (fit.json, approaches.png); one token count gets L(N) = E + A / N^alpha
    (Chinchilla's L(N, D) needs several budgets: `scaling-jax fit --law chinchilla`)."""
    if cfg.sweep.lr_grid:
        best = best_learning_rates(rows, ("budget", "d_model"))
        (out.with_name("lr_sweep.json")).write_text(json.dumps(best, indent=1) + "\n")
        plot_lr_sweep(rows, out.with_name("lr_sweep.png"), best)
        print(lr_table(best), flush=True)
        print(f"wrote {out.with_name('lr_sweep.json')}\nwrote {out.with_name('lr_sweep.png')}", flush=True)
        return
    law = "approaches" if cfg.sweep.budgets else "power"
    fit_cli.main([str(out), "--law", law, "--out", str(out.with_name("fit.json")), "--plot-dir", str(out.parent),
                  "--grid", "coarse"])
