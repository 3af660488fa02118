"""Size sweeps: one recipe trained over a GPT width family, collected into results.csv, then fitted."""
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
from scaling_jax.train.loop import train

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("name", "d_model", "n_layers", "n_heads", "params", "params_total", "tokens", "flops",
                  "steps", "lr", "loss", "train_loss")


def member_configs(cfg) -> list:
    """One Config per width in `sweep.widths`: depth = width / aspect_ratio (at least 1), heads of
    `head_dim`, steps = sweep.tokens / (batch * seq_len), learning rate by `sweep.lr_rule`."""
    s = cfg.sweep
    if not s.widths:
        raise ConfigError("sweep.widths: list at least one model width")
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    steps = s.tokens // tokens_per_step if s.tokens else cfg.train.steps
    if steps <= 0:
        raise ConfigError(f"sweep.tokens={s.tokens} is less than one step of {tokens_per_step} tokens")
    out = []
    for d in s.widths:
        if d % s.head_dim:
            raise ConfigError(f"sweep.widths: {d} is not a multiple of sweep.head_dim={s.head_dim}")
        n_layers = max(1, round(d / s.aspect_ratio))
        lr = cfg.optim.lr * (s.base_width / d if s.lr_rule == "inverse_width" else 1.0)
        name = f"d{d}_l{n_layers}"
        out.append(dataclasses.replace(
            cfg,
            run=dataclasses.replace(cfg.run, name=name, dir=str(cfg.run_dir / "members" / name)),
            model=dataclasses.replace(cfg.model, d_model=d, n_layers=n_layers, n_heads=d // s.head_dim),
            train=dataclasses.replace(cfg.train, steps=steps, eval_every=steps),
            optim=dataclasses.replace(cfg.optim, lr=lr),
            checkpoint=dataclasses.replace(cfg.checkpoint, every=cfg.checkpoint.every or steps),
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
            "steps": member.train.steps, "lr": member.optim.lr, "loss": result["eval"]["loss"],
            "train_loss": result.get("train_loss", "")}


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
        if "preempted" in train_fn(member):
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
        # One token budget: L(N) = E + A / N^alpha with bootstrap intervals (Chinchilla's L(N, D)
        # needs several budgets; run `scaling-jax fit --law chinchilla` on such a CSV).
        fit_cli.main([str(out), "--law", "power", "--out", str(out.with_name("fit.json")),
                      "--plot-dir", str(out.parent)])
    return out
