"""`scaling-jax bench`: train-step throughput, MFU, compile time and memory, side by side with peers."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

# Published peak dense bf16 FLOP/s per chip, for MFU on accelerators (vendor data sheets).
NAMED_PEAKS = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
               "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12, "TPU v6 lite": 918e12}


@dataclass(frozen=True)
class Shape:
    name: str
    family: str  # bert | gpt2
    vocab: int
    hidden: int
    layers: int
    heads: int
    intermediate: int
    seq: int
    batch: int


PRESETS = {
    # The issue-8 reference shape: BERT token classification, AdamW, float32.
    "bert_small": Shape("bert_small", "bert", 30522, 256, 4, 4, 1024, 128, 16),
    "gpt_small": Shape("gpt_small", "gpt2", 50257, 256, 4, 4, 1024, 128, 16),
    "tiny": Shape("tiny", "bert", 1000, 64, 2, 4, 256, 32, 8),  # a smoke test of the harness
}


def _median_time(fn: Callable[[], Any], steps: int, warmup: int) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def matmul_peak(dtype: str = "float32", n: int = 2048, steps: int = 10) -> float:
    """Measured dense matmul FLOP/s on the default device (the MFU denominator on CPU)."""
    import jax
    import jax.numpy as jnp
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(k2, (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    sec = _median_time(lambda: f(a, b).block_until_ready(), steps, 2)
    return 2 * n**3 / sec


def model_flops_per_token(shape: Shape, n_matmul_params: int) -> float:
    """6 N (matmul params, embeddings excluded) + 12 L T d for attention scores and values (fwd+bwd)."""
    return 6 * n_matmul_params + 12 * shape.layers * shape.seq * shape.hidden


def _hf_config(shape: Shape, dropout: float):
    if shape.family == "bert":
        from scaling_jax.models import BertConfig
        return BertConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                          num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                          hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    from scaling_jax.models import GPT2Config
    return GPT2Config(vocab_size=shape.vocab, n_positions=max(shape.seq, 128), n_embd=shape.hidden,
                      n_layer=shape.layers, n_head=shape.heads, n_inner=shape.intermediate,
                      resid_pdrop=dropout, embd_pdrop=dropout, attn_pdrop=dropout)


def _batch(shape: Shape, num_labels: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    ids = rng.integers(0, shape.vocab, (shape.batch, shape.seq), dtype=np.int32)
    batch = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
    if shape.family == "bert":
        batch["labels"] = rng.integers(0, num_labels, (shape.batch, shape.seq), dtype=np.int32)
    return batch


@dataclass
class Contender:
    """One benchmarked step: `run()` does one step and waits for it; `row` holds what is known
    before timing (compile time, memory, FLOPs per step)."""
    name: str
    run: Callable[[], None]
    flops: float
    tokens: int
    peak: float | None
    row: dict


def prepare_ours(shape: Shape, *, dtype: str = "float32", dropout: float = 0.1, remat: bool | str = False,
                 scan: bool = False, peak: float | None = None) -> Contender:
    import jax
    import jax.numpy as jnp
    import optax
    import scaling_jax as sj
    task = "token_classification" if shape.family == "bert" else "causal_lm"
    model = sj.init_model(_hf_config(shape, dropout), task=task, num_labels=9 if shape.family == "bert" else None,
                          dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32, remat=remat,
                          scan_layers=scan)
    tx = sj.stack_layers(optax.adamw(1e-4)) if scan else optax.adamw(1e-4)
    mesh = sj.make_mesh(data=-1)
    state, state_sh = sj.init_state(model.params, model.logical_axes(), tx, mesh=mesh, rules=sj.DEFAULT_RULES)
    bsh = sj.batch_sharding(mesh)
    step = sj.make_train_step(model, tx, mesh=mesh, state_sharding=state_sh, batch_sharding=bsh, stack_layers=scan)
    batch = jax.device_put(_batch(shape, 9), bsh)
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    holder = {"state": state}

    def run():
        holder["state"], m = compiled(holder["state"], batch)
        m["train/loss"].block_until_ready()

    n_matmul = sum(int(np.prod(x.shape)) for path, x in jax.tree_util.tree_leaves_with_path(model.params)
                   if "kernel" in jax.tree_util.keystr(path))
    if shape.family == "gpt2":  # tied LM head is a matmul too
        n_matmul += shape.vocab * shape.hidden
    tokens = shape.batch * shape.seq
    flops = model_flops_per_token(shape, n_matmul) * tokens
    name = f"ours/{shape.name}/{dtype}" + ("/scan" if scan else "")
    return Contender(name, run, flops, tokens, peak,
                     {"compile_s": compile_s, "model_tflop_per_step": flops / 1e12,
                      "temp_mib": getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem else None})


def prepare_torch(shape: Shape, *, dropout: float = 0.1, peak: float | None = None) -> Contender | None:
    try:
        import torch
        import transformers
    except ImportError:
        return None
    torch.manual_seed(0)
    torch.set_num_threads(os.cpu_count() or 1)
    cfg = _hf_config(shape, dropout)
    if shape.family == "bert":
        hf = transformers.BertConfig(**cfg.to_hf_dict(), num_labels=9)
        model = transformers.BertForTokenClassification(hf)
    else:
        hf = transformers.GPT2Config(**cfg.to_hf_dict())
        model = transformers.GPT2LMHeadModel(hf)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    b = {k: torch.from_numpy(v.astype(np.int64)) for k, v in _batch(shape, 9).items()}
    if shape.family == "gpt2":
        b["labels"] = b["input_ids"]

    def run():
        opt.zero_grad(set_to_none=True)
        model(**b).loss.backward()
        opt.step()

    tokens = shape.batch * shape.seq
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n
                   and not n.endswith(("wte.weight", "wpe.weight")))
    if shape.family == "gpt2":
        n_matmul += shape.vocab * shape.hidden
    return Contender(f"torch/{shape.name}/float32", run, model_flops_per_token(shape, n_matmul) * tokens, tokens,
                     peak, {"compile_s": 0.0})


def time_interleaved(contenders: list[Contender], *, steps: int, warmup: int = 3,
                     rounds: int = 10) -> tuple[list[dict], dict[str, list[float]]]:
    """Median step time of each contender, timed in `rounds` alternating blocks of steps.

    On a shared machine the speed drifts by tens of percent within a minute; timing A's steps and
    then B's puts that drift into the A/B ratio, alternating blocks spreads it over both. Returns
    the rows and, per contender, the median step seconds of each round (for `paired_ratio`).
    """
    for c in contenders:
        for _ in range(warmup):
            c.run()
    times: dict[str, list[list[float]]] = {c.name: [] for c in contenders}
    rounds = max(1, min(rounds, steps))
    per_round = -(-steps // rounds)
    for _ in range(rounds):
        for c in contenders:
            block = []
            for _ in range(per_round):
                t = time.perf_counter()
                c.run()
                block.append(time.perf_counter() - t)
            times[c.name].append(block)
    rows = []
    for c in contenders:
        sec = statistics.median(t for block in times[c.name] for t in block)
        rows.append({"name": c.name, "tokens_per_s": c.tokens / sec, "step_ms": sec * 1e3, **c.row,
                     "mfu": c.flops / sec / c.peak if c.peak else None})
    return rows, {name: [statistics.median(b) for b in blocks] for name, blocks in times.items()}


def paired_ratio(ref_round_s: list[float], ours_round_s: list[float]) -> float:
    """Speed of ours over ref: the median over rounds of ref's / ours' step time in the same round.

    Adjacent blocks see the same machine, so the per-round ratio cancels the drift that a ratio of
    overall medians keeps when the machine is fast for one contender's good rounds.
    """
    return statistics.median(r / o for r, o in zip(ref_round_s, ours_round_s))


def bench_compile(hidden: int = 256, layers: tuple[int, int] = (2, 12), repeats: int = 3) -> list[dict]:
    """Train-step compile time at two depths (median of `repeats` fresh compiles, interleaved),
    layers unrolled and under lax.scan, with the ratios."""
    out = []
    for scan in (False, True):
        shapes = [Shape(f"bert_h{hidden}_l{n}", "bert", 30522, hidden, n, 4, 4 * hidden, 128, 16) for n in layers]
        secs: list[list[float]] = [[], []]
        for _ in range(repeats):
            for j, shape in enumerate(shapes):
                secs[j].append(prepare_ours(shape, scan=scan).row["compile_s"])
        med = [statistics.median(x) for x in secs]
        for shape, m in zip(shapes, med):
            out.append({"name": f"compile/{shape.name}" + ("/scan" if scan else ""), "tokens_per_s": None,
                        "step_ms": None, "mfu": None, "compile_s": m})
        out.append({"name": f"ratio/compile_{layers[1]}_vs_{layers[0]}_layers" + ("/scan" if scan else ""),
                    "tokens_per_s": None, "step_ms": None, "mfu": None, "ratio": med[1] / med[0]})
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scaling-jax bench", description=__doc__)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--preset", choices=sorted(PRESETS), default="bert_small")
    p.add_argument("--steps", type=int, default=40, help="timed steps per contender, in 10 alternating rounds")
    p.add_argument("--no-torch", action="store_true", help="skip transformers' PyTorch model")
    p.add_argument("--compile", action="store_true", help="also compare 2- vs 12-layer compile time")
    p.add_argument("--scan", action="store_true", help="also the float32 step with layers under lax.scan")
    p.add_argument("--fit", action="store_true", help="also the scaling-law fit: JAX grid vs scipy")
    args = p.parse_args(argv)
    from scaling_jax.hostmem import cpu_info, keep_host_buffers
    keep_host_buffers()  # the whole process, so torch's allocations get it too
    import jax
    rows: list[dict] = []
    device = jax.devices()[0]
    named = next((v for k, v in NAMED_PEAKS.items() if k.lower() in device.device_kind.lower()), None)
    peak32 = named or matmul_peak("float32")
    peak16 = named or matmul_peak("bfloat16")
    rows.append({"name": "matmul_peak", "device": device.device_kind, "float32_gflops": peak32 / 1e9,
                 "bfloat16_gflops": peak16 / 1e9, "tokens_per_s": None, "step_ms": None, "mfu": None,
                 **(cpu_info() if device.platform == "cpu" else {})})
    shape = PRESETS[args.preset]
    contenders = [prepare_ours(shape, peak=peak32), prepare_ours(shape, dtype="bfloat16", peak=peak16)]
    if args.scan:
        contenders.append(prepare_ours(shape, peak=peak32, scan=True))
    ref = None if args.no_torch else prepare_torch(shape, peak=peak32)
    if ref is not None:
        contenders.append(ref)
    timed, round_s = time_interleaved(contenders, steps=args.steps)
    rows += timed
    if ref is not None:  # per-round paired ratios (`paired_ratio`), not a ratio of the medians above
        rows.append({"name": f"ratio/{shape.name}", "tokens_per_s": None, "step_ms": None, "mfu": None,
                     "float32_vs_torch": paired_ratio(round_s[ref.name], round_s[contenders[0].name]),
                     "bfloat16_vs_torch": paired_ratio(round_s[ref.name], round_s[contenders[1].name])})
    if args.compile:
        rows += bench_compile()
    if args.fit:
        from scaling_jax.scaling.bench_fit import run_bench
        for r in run_bench():
            rows.append({"tokens_per_s": None, "step_ms": None, "mfu": None, **r})
    rows.append({"name": "peak_rss", "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 "tokens_per_s": None, "step_ms": None, "mfu": None})
    for r in rows:
        if args.json:
            print(json.dumps(r), flush=True)
        else:
            print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                            if v is not None), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
