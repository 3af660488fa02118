"""`scaling-jax mup-check CONFIG`: the coordinate check of Yang et al. 2022 (TP5, fig. 5): the RMS of each
layer's activations and of the logits over a few training steps at several widths, under SP and muP."""
from __future__ import annotations

import argparse
import csv
import dataclasses
import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from scaling_jax.config import Config, load_config
from scaling_jax.data.sampler import batch_indices
from scaling_jax.errors import ConfigError
from scaling_jax.train.batches import global_batch
from scaling_jax.train.session import open_session

DEFAULT_WIDTHS = (64, 128, 256, 512, 1024)
# What the check follows: the token embedding, each block's output, its attention and MLP outputs.
_TRACKED = re.compile(r"^(wte|embed_tokens|(h|layers)_\d+(/(attn|mlp|self_attn))?)$")


def width_config(cfg: Config, width: int, parametrization: str, steps: int) -> Config:
    """`cfg` at d_model = width with the head size kept (n_heads = width / head size), depth kept,
    `steps` steps at a constant learning rate (no warmup: the check measures the size of updates at
    a given rate), evaluation and checkpoints off."""
    head_dim = cfg.model.d_model // cfg.model.n_heads
    if width % head_dim:
        raise ConfigError(f"mup-check --widths: {width} is not a multiple of the head size {head_dim} "
                          f"(model.d_model / model.n_heads)")
    return dataclasses.replace(
        cfg,
        run=dataclasses.replace(cfg.run, name=f"{parametrization}_d{width}",
                                dir=str(cfg.run_dir / "mup_check" / f"{parametrization}_d{width}")),
        model=dataclasses.replace(cfg.model, d_model=width, n_heads=width // head_dim, parametrization=parametrization,
                                  scan_layers=False, remat=False, remat_policy=""),
        data=dataclasses.replace(cfg.data, tokenizer=cfg.data.tokenizer or (
            str(cfg.run_dir / "tokenizer") if cfg.data.bpe_vocab else "")),
        train=dataclasses.replace(cfg.train, steps=steps),
        optim=dataclasses.replace(cfg.optim, warmup_steps=0, schedule="constant"))


def _rms(x) -> jax.Array:
    x = jnp.asarray(x, jnp.float32)
    return jnp.sqrt(jnp.mean(jnp.square(x)))


def make_probe(session, batch):
    """A jitted params -> {name: RMS} of the token embedding, every block's output, its attention
    and MLP outputs, and the logits, on one batch (Flax's capture_intermediates on the forward)."""
    module = session.model.module

    @jax.jit
    def forward(p):
        logits, state = module.apply({"params": p}, batch["input_ids"], batch.get("attention_mask"),
                                     capture_intermediates=True, mutable=["intermediates"])
        out = {}
        for path, value in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]:
            keys = [getattr(k, "key", None) for k in path]
            name = "/".join(str(k) for k in keys[:-2])
            if keys[-2] == "__call__" and _TRACKED.match(name):
                out[name] = _rms(value)
        out["logits"] = _rms(logits)
        return out

    return lambda p: {k: float(v) for k, v in jax.device_get(forward(p)).items()}


def check_width(cfg: Config, width: int, parametrization: str, steps: int) -> list[dict]:
    """Rows {parametrization, width, step, name, rms} for steps 0..steps (step 0 = at init), measured
    on a fixed batch while training on the run's batches with the run's own train step."""
    wcfg = width_config(cfg, width, parametrization, steps)
    session = open_session(wcfg)
    probe = global_batch(session.data.train, batch_indices(0, wcfg.data.batch_size, len(session.data.train),
                                                           wcfg.train.seed + 1), session.batch_sharding)
    state, rows = session.state, []
    measure = make_probe(session, probe)
    for step in range(steps + 1):
        for name, value in measure(session.model_params(state.params)).items():
            rows.append({"parametrization": parametrization, "width": width, "step": step, "name": name,
                         "rms": value})
        if step < steps:
            idx = batch_indices(step, wcfg.data.batch_size, len(session.data.train), wcfg.train.seed)
            state, metrics = session.train_step(state, global_batch(session.data.train, idx, session.batch_sharding))
            if not bool(metrics["train/finite"]):
                rows.append({"parametrization": parametrization, "width": width, "step": step + 1,
                             "name": "nonfinite_loss", "rms": float("nan")})
                break
    return rows


def summarize(rows: list[dict], steps: int) -> dict:
    """Per parametrization: the logits' RMS at `steps` by width, `spread` (max / min across widths)
    and `growth` (widest / narrowest)."""
    out = {}
    for p in sorted({r["parametrization"] for r in rows}):
        by_width = {r["width"]: r["rms"] for r in rows
                    if r["parametrization"] == p and r["name"] == "logits" and r["step"] == steps}
        widths = sorted(by_width)
        values = np.array([by_width[w] for w in widths])
        out[p] = {"widths": widths, "logits_rms": values.tolist(),
                  "spread": float(values.max() / values.min()) if values.size else float("nan"),
                  "growth": float(values[-1] / values[0]) if values.size else float("nan")}
    return out


def plot(rows: list[dict], path: Path, steps: int) -> Path:
    """One row of panels per parametrization: RMS against width (log-log) of the embedding, the
    first and last block outputs, the last block's attention and MLP outputs, the logits; one line
    per step."""
    params = sorted({r["parametrization"] for r in rows}, key=lambda p: p != "sp")
    layers = sorted({r["name"] for r in rows if r["name"].startswith(("h_", "layers_")) and "/" not in r["name"]},
                    key=lambda n: int(n.split("_")[1]))
    last = layers[-1] if layers else ""
    names = [n for n in ("wte", layers[0] if layers else "", last, f"{last}/attn", f"{last}/mlp", "logits")
             if n and any(r["name"] == n for r in rows)]
    fig = Figure(figsize=(3.2 * len(names), 3.0 * len(params)), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(params), len(names), squeeze=False)
    cmap = colormaps["viridis"]
    for i, p in enumerate(params):
        for j, name in enumerate(names):
            ax = axes[i][j]
            for t in range(steps + 1):
                pts = sorted((r["width"], r["rms"]) for r in rows
                             if r["parametrization"] == p and r["name"] == name and r["step"] == t)
                if pts:
                    ax.plot(*zip(*pts), marker="o", ms=3, color=cmap(t / max(steps, 1) * 0.9), label=f"t={t}")
            ax.set(xscale="log", yscale="log", title=f"{p.upper()}: {name}", xlabel="width d_model")
            if j == 0:
                ax.set_ylabel("RMS of coordinates")
            ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=7)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path


def table(summary: dict) -> str:
    """The logits' RMS after the last step per width and parametrization, with spread and growth."""
    widths = sorted({w for s in summary.values() for w in s["widths"]})
    lines = ["| parametrization | " + " | ".join(f"d={w}" for w in widths) + " | max/min | widest/narrowest |",
             "| --- |" + " ---: |" * (len(widths) + 2)]
    for p, s in summary.items():
        values = dict(zip(s["widths"], s["logits_rms"]))
        lines.append(f"| {p} | " + " | ".join(f"{values[w]:.3g}" if w in values else "" for w in widths)
                     + f" | {s['spread']:.2f} | {s['growth']:.2f} |")
    return "\n".join(lines)


def run(cfg: Config, widths, steps: int, parametrizations, out_dir: Path | None = None) -> dict:
    """The check over widths x parametrizations; writes coord_check.csv, .json, .png into `out_dir`
    (default <run.dir>/mup_check) and returns {summary, rows, seconds, files}."""
    if "mup" in parametrizations and cfg.model.base_width <= 0:
        raise ConfigError("model.base_width: the muP side of the check needs the base width (e.g. the narrowest)")
    if steps < 1:
        raise ConfigError(f"mup-check --steps: need at least 1, got {steps}")
    out_dir = Path(out_dir) if out_dir else cfg.run_dir / "mup_check"
    t0 = time.perf_counter()
    rows: list[dict] = []
    jobs = [(p, w) for p in parametrizations for w in widths]
    for p, w in tqdm(jobs, desc="mup-check"):
        rows += check_width(cfg, w, p, steps)
    summary = summarize(rows, steps)
    out_dir.mkdir(parents=True, exist_ok=True)
    with (out_dir / "coord_check.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=("parametrization", "width", "step", "name", "rms"))
        writer.writeheader()
        writer.writerows(rows)
    seconds = time.perf_counter() - t0
    (out_dir / "coord_check.json").write_text(json.dumps({"summary": summary, "steps": steps, "seconds": seconds,
                                                          "widths": list(widths)}, indent=1) + "\n")
    png = plot(rows, out_dir / "coord_check.png", steps)
    return {"summary": summary, "rows": rows, "seconds": seconds,
            "files": [out_dir / "coord_check.csv", out_dir / "coord_check.json", png]}


def main(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)
    widths = tuple(int(w) for w in args.widths.split(",") if w) if args.widths else DEFAULT_WIDTHS
    params = tuple(p for p in args.parametrizations.split(",") if p)
    bad = [p for p in params if p not in ("sp", "mup")]
    if bad or not params:
        raise ConfigError(f"mup-check --parametrizations: {','.join(bad) or '(none)'}; use sp, mup or sp,mup")
    out = run(cfg, widths, args.steps, params, Path(args.out) if args.out else None)
    print(table(out["summary"]))
    print(f"{len(widths)} widths x {len(params)} parametrizations, {args.steps} steps: {out['seconds']:.0f} s")
    for f in out["files"]:
        print(f"wrote {f}")
    return 0


__all__ = ["check_width", "main", "run", "summarize", "width_config"]
