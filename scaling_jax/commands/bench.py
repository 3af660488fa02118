"""`scaling-jax bench`: train-step throughput, MFU, compile time and memory, side by side with peers."""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm

from scaling_jax import ops
from scaling_jax.commands import finetune_bench
from scaling_jax.checkpoint import Checkpointer
from scaling_jax.checksum import tree_checksums
from scaling_jax.errors import ConfigError
from scaling_jax.commands import bench_data
from scaling_jax.ops import xla, xla_cpu
from scaling_jax.flops import train_flops_per_token
from scaling_jax.hostmem import cpu_info, keep_host_buffers
from scaling_jax.mesh import DEFAULT_RULES, batch_sharding, make_mesh
from scaling_jax.models import BertConfig, GPT2Config, init_model, load_pretrained, load_tokenizer
from scaling_jax.models.generate import generate
from scaling_jax.models.hf import resolve_model_dir
from scaling_jax.scaling.bench_fit import run_bench as run_fit_bench
from scaling_jax.scaling.coverage import measure_coverage, measure_isoflop_coverage
from scaling_jax.train.stacked import stack_layers
from scaling_jax.train.step import init_state, make_train_step

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
    # Accelerator shapes (launch/device_check.sh): BERT-base at sequence 512, GPT-2 124M at 1024.
    "bert_base": Shape("bert_base", "bert", 30522, 768, 12, 12, 3072, 512, 16),
    "gpt2_124m": Shape("gpt2_124m", "gpt2", 50257, 768, 12, 12, 3072, 1024, 8),
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


def matmul_peak(dtype: str = "float32", n: int = 0, steps: int = 10) -> float:
    """Measured dense n x n matmul FLOP/s on the default device (n: 2048 on CPU, 8192 elsewhere)."""
    n = n or (2048 if jax.default_backend() == "cpu" else 8192)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(k1, (n, n), jnp.dtype(dtype))
    b = jax.random.normal(k2, (n, n), jnp.dtype(dtype))
    f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
    sec = _median_time(lambda: f(a, b).block_until_ready(), steps, 2)
    return 2 * n**3 / sec


def _hf_config(shape: Shape, dropout: float):
    if shape.family == "bert":
        return BertConfig(vocab_size=shape.vocab, hidden_size=shape.hidden, num_hidden_layers=shape.layers,
                          num_attention_heads=shape.heads, intermediate_size=shape.intermediate,
                          hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
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
    max_per_round: int = 0  # 0: the rounds' common step count; else at most this many (a very slow peer)


def prepare_ours(shape: Shape, *, dtype: str = "float32", dropout: float = 0.1, remat: bool | str = False,
                 scan: bool = False, peak: float | None = None, kernels: str | ops.Kernels = "auto",
                 label: str = "") -> Contender:
    """Our train step on `shape` (AdamW), compiled; `kernels` the ops backend, `label` a name suffix."""
    task = "token_classification" if shape.family == "bert" else "causal_lm"
    model = init_model(_hf_config(shape, dropout), task=task, num_labels=9 if shape.family == "bert" else None,
                          dtype=jnp.bfloat16 if dtype == "bfloat16" else jnp.float32, remat=remat,
                          scan_layers=scan, kernels=kernels)
    tx = stack_layers(optax.adamw(1e-4)) if scan else optax.adamw(1e-4)
    mesh = make_mesh(data=-1)
    state, state_sh = init_state(model.params, model.logical_axes(), tx, mesh=mesh, rules=DEFAULT_RULES)
    bsh = batch_sharding(mesh)
    step = make_train_step(model, tx, mesh=mesh, state_sharding=state_sh, batch_sharding=bsh, stack_layers=scan)
    batch = jax.device_put(_batch(shape, 9), bsh)
    t = time.perf_counter()
    compiled = step.lower(state, batch).compile()
    compile_s = time.perf_counter() - t
    mem = compiled.memory_analysis()
    attention = "cudnn" if "cudnn" in compiled.as_text().lower() else "xla"  # cuDNN's fused attention call
    holder = {"state": state}

    def run():
        holder["state"], m = compiled(holder["state"], batch)
        m["train/loss"].block_until_ready()

    tokens = shape.batch * shape.seq
    flops = model.flops_per_token(shape.seq) * tokens
    name = f"ours/{shape.name}/{dtype}" + ("/scan" if scan else "") + (f"/{label}" if label else "")
    return Contender(name, run, flops, tokens, peak,
                     {"compile_s": compile_s, "model_tflop_per_step": flops / 1e12, "attention": attention,
                      "temp_mib": getattr(mem, "temp_size_in_bytes", 0) / 2**20 if mem else None})


def bench_checkpoint(shape: Shape, rounds: int = 5) -> list[dict]:
    """What checkpoint integrity costs on the preset's AdamW train state: the checksum pass alone
    (`scaling_jax.checksum`, on device) next to the blocking part of an async save (which includes
    it: the call returns once the arrays are off the device) and a whole save + commit; medians."""
    task = "token_classification" if shape.family == "bert" else "causal_lm"
    model = init_model(_hf_config(shape, 0.0), task=task, num_labels=9 if shape.family == "bert" else None)
    state, _ = init_state(model.params, model.logical_axes(), optax.adamw(1e-4), mesh=make_mesh(data=-1),
                          rules=DEFAULT_RULES)
    times: dict[str, list[float]] = {"checksum_s": [], "save_blocking_s": [], "save_commit_s": []}
    with tempfile.TemporaryDirectory() as d, Checkpointer(d, every=1, max_to_keep=1) as ckpt:
        ckpt.save(0, state, extra={})  # compiles the checksum pass
        ckpt.wait()
        for r in range(1, rounds + 1):
            t = time.perf_counter()
            tree_checksums(state)
            times["checksum_s"].append(time.perf_counter() - t)
            t = time.perf_counter()
            ckpt.save(r, state, extra={})
            times["save_blocking_s"].append(time.perf_counter() - t)
            ckpt.wait()
            times["save_commit_s"].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in times.items()}
    return [{"name": f"checkpoint/{shape.name}", "state_mib": sum(x.nbytes for x in jax.tree.leaves(state)) / 2**20,
             **med, "checksum_share_of_save": med["checksum_s"] / med["save_commit_s"],
             "tokens_per_s": None, "step_ms": None, "mfu": None}]


def prepare_torch(shape: Shape, *, dtype: str = "float32", dropout: float = 0.1,
                  peak: float | None = None) -> Contender | None:
    """transformers' PyTorch model on the same shape; `dtype="bfloat16"` runs forward and loss under
    `torch.autocast("cpu", dtype=torch.bfloat16)` (float32 params and optimizer, as ours)."""
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

    autocast = dtype == "bfloat16"

    def run():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = model(**b).loss
        loss.backward()
        opt.step()

    tokens = shape.batch * shape.seq
    n_matmul = sum(p.numel() for n, p in model.named_parameters() if p.dim() == 2 and "embeddings" not in n
                   and not n.endswith(("wte.weight", "wpe.weight")))
    if shape.family == "gpt2":  # the LM head, tied to wte
        n_matmul += shape.vocab * shape.hidden
    flops = train_flops_per_token(int(n_matmul), shape.layers, shape.seq, shape.hidden) * tokens
    # torch emulates bf16 on a CPU without bf16 dot instructions at ~1/10 of its f32 speed: time it
    # one step per round there, so the run stays minutes long.
    slow = autocast and cpu_info()["bf16_dots"] == "emulated"
    return Contender(f"torch/{shape.name}/{dtype}", run, flops, tokens, peak, {"compile_s": 0.0},
                     max_per_round=1 if slow else 0)


def time_interleaved(contenders: list[Contender], *, steps: int, warmup: int = 3,
                     rounds: int = 10) -> tuple[list[dict], dict[str, list[float]]]:
    """Median step time of each contender, timed in `rounds` alternating blocks of steps.

    On a shared machine the speed drifts by tens of percent within a minute; timing A's steps and
    then B's puts that drift into the A/B ratio, alternating blocks spreads it over both. Returns
    the rows and, per contender, the median step seconds of each round (for `paired_ratio`).
    """
    for c in contenders:
        for _ in range(min(warmup, c.max_per_round or warmup)):
            c.run()
    times: dict[str, list[list[float]]] = {c.name: [] for c in contenders}
    rounds = max(1, min(rounds, steps))
    per_round = -(-steps // rounds)
    for _ in tqdm(range(rounds), desc="bench rounds", file=sys.stderr, leave=False):
        for c in contenders:
            block = []
            for _ in range(min(per_round, c.max_per_round or per_round)):
                t = time.perf_counter()
                c.run()
                block.append(time.perf_counter() - t)
            times[c.name].append(block)
    rows = []
    for c in contenders:
        sec = statistics.median(t for block in times[c.name] for t in block)
        rows.append({"name": c.name, "tokens_per_s": c.tokens / sec, "step_ms": sec * 1e3, **c.row,
                     "mfu": c.flops / sec / c.peak if c.peak else None,
                     "steps": sum(len(b) for b in times[c.name])})
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


def kernel_ablations() -> dict[str, ops.Kernels]:
    """xla_cpu with one trick changed (for `--kernels`): its dropout bits replaced by jax.random's,
    and its bf16 GEMM tricks forced on (they are on by default only where bf16 dots are native)."""
    cpu = ops.BACKENDS["xla_cpu"]
    return {"xla_cpu-no_threefry": replace(cpu, name="xla_cpu-no_threefry", dropout_mask=xla.dropout_mask),
            "xla_cpu+acc32_linear": replace(cpu, name="xla_cpu+acc32_linear", linear=_forced_acc32_linear),
            "xla_cpu+bmm_attention": replace(cpu, name="xla_cpu+bmm_attention", attention=_forced_bmm_attention)}


def _forced_acc32_linear(x, w, b=None, *, act=None, dtype=jnp.float32):
    if jnp.dtype(dtype) == jnp.float32:
        return xla.linear(x, w, b, act=act, dtype=dtype)
    return xla_cpu.linear_acc32(x, w, b, act=act, dtype=dtype)


def _forced_bmm_attention(q, k, v, mask, *, scale, dropout_rate=0.0, dropout_rng=None):
    if dropout_rng is None or dropout_rate == 0.0 or q.dtype == jnp.float32 or q.shape[2] != k.shape[2]:
        return xla_cpu.attention(q, k, v, mask, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)
    return xla_cpu.attention_bmm(q, k, v, mask, scale=scale, dropout_rate=dropout_rate, dropout_rng=dropout_rng)


def kernel_contenders(shape: Shape, peaks: dict[str, float], dropout: float) -> list[tuple[str, Contender]]:
    """(dtype, contender) for each backend and each xla_cpu ablation; the f32 step differs between
    the backends only in its dropout bits, so its ablations are the bf16 ones."""
    out = []
    for dtype in peaks:
        out.append((dtype, prepare_ours(shape, dtype=dtype, dropout=dropout, peak=peaks[dtype], kernels="xla",
                                        label="xla")))
    if "bfloat16" in peaks:
        for name, kern in kernel_ablations().items():
            out.append(("bfloat16", prepare_ours(shape, dtype="bfloat16", dropout=dropout, peak=peaks["bfloat16"],
                                                 kernels=kern, label=name)))
    return out


GENERATE_PROMPT = ("ROMEO: But, soft! what light through yonder window breaks? It is the east, and Juliet is "
                   "the sun. Arise, fair sun, and kill the envious moon,")


def bench_generate(model_dir: str = "smollm2-135m", batches: tuple[int, ...] = (1, 8), new_tokens: int = 128,
                   rounds: int = 3, dtype: str = "float32") -> list[dict]:
    """Greedy generation of `new_tokens` tokens after one real prompt (repeated over the batch):
    ours (`scaling_jax.generate`, KV cache, one jit) vs transformers' `generate(use_cache=True)` on
    the same weights, timed in alternating rounds. Per contender: decode tokens/s (all rows' new
    tokens over the whole call) and time to first token (a 1-token call: prefill + one pick); EOS
    is off on both sides so every call makes the same number of tokens. `dtype` is both sides'
    weights, activations and KV cache (bfloat16: ours casts the params once, torch loads in bf16)."""
    import torch
    import transformers
    torch.set_num_threads(os.cpu_count() or 1)
    if dtype not in ("float32", "bfloat16"):
        raise ConfigError(f"--generate-dtype must be float32 or bfloat16, got {dtype!r}")
    path = resolve_model_dir(model_dir)
    ours = load_pretrained(path, task="causal_lm", dtype=jnp.dtype(dtype))
    params = jax.tree.map(lambda a: a.astype(dtype), ours.params)
    theirs = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=getattr(torch, dtype)).eval()
    prompt = load_tokenizer(path)(GENERATE_PROMPT)["input_ids"]
    rows = []
    for batch in batches:
        ids = np.asarray([prompt] * batch, np.int32)
        mask = np.ones_like(ids)
        t_ids, t_mask = torch.from_numpy(ids.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))

        def run_ours(n):
            return np.asarray(generate(ours, params, ids, mask, max_new_tokens=n, cache_dtype=jnp.dtype(dtype)))

        def run_theirs(n):
            with torch.no_grad():
                out = theirs.generate(t_ids, attention_mask=t_mask, max_new_tokens=n, min_new_tokens=n,
                                      do_sample=False, use_cache=True, eos_token_id=None,
                                      pad_token_id=theirs.config.pad_token_id or 0)
            return out[:, ids.shape[1]:].numpy()

        t = time.perf_counter()
        agree = run_ours(new_tokens) == run_theirs(new_tokens)  # also compiles ours
        run_ours(1)
        first_s = time.perf_counter() - t
        times: dict[str, list[float]] = {k: [] for k in ("ours", "ours_ttft", "hf", "hf_ttft")}
        for _ in tqdm(range(rounds), desc=f"generate b{batch}", file=sys.stderr, leave=False):
            for key, fn, n in (("ours", run_ours, new_tokens), ("hf", run_theirs, new_tokens),
                               ("ours_ttft", run_ours, 1), ("hf_ttft", run_theirs, 1)):
                t = time.perf_counter()
                fn(n)
                times[key].append(time.perf_counter() - t)
        for who in ("ours", "hf"):
            sec = statistics.median(times[who])
            rows.append({"name": f"generate/{who}/b{batch}", "dtype": dtype, "tokens_per_s": batch * new_tokens / sec,
                         "step_ms": sec / new_tokens * 1e3, "mfu": None,
                         "ttft_ms": statistics.median(times[f"{who}_ttft"]) * 1e3, "new_tokens": new_tokens,
                         "prompt_tokens": len(prompt), **({"first_call_s": first_s} if who == "ours" else {})})
        rows.append({"name": f"ratio/generate_b{batch}", "tokens_per_s": None, "step_ms": None, "mfu": None,
                     "ours_vs_hf_tokens_per_s": paired_ratio(times["hf"], times["ours"]),
                     "ours_vs_hf_ttft": paired_ratio(times["hf_ttft"], times["ours_ttft"]),
                     "same_greedy_tokens": bool(agree.all()),
                     # new tokens alike in every row before the first difference (bf16 can split a near tie)
                     "same_leading_tokens": int(np.cumprod(agree, axis=1).sum(axis=1).min())})
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="scaling-jax bench", description=__doc__)
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    p.add_argument("--preset", choices=sorted(PRESETS), default="bert_small")
    p.add_argument("--steps", type=int, default=40, help="timed steps per contender, in 10 alternating rounds")
    p.add_argument("--dtypes", default="float32,bfloat16", help="compute dtypes of our step (comma-separated)")
    p.add_argument("--dropout", type=float, default=0.1, help="dropout of the benchmarked models (0: cuDNN "
                   "attention can serve bf16 on NVIDIA GPUs)")
    p.add_argument("--no-torch", action="store_true", help="skip transformers' PyTorch model")
    p.add_argument("--compile", action="store_true", help="also compare 2- vs 12-layer compile time")
    p.add_argument("--scan", action="store_true", help="also the float32 step with layers under lax.scan")
    p.add_argument("--fit", action="store_true", help="also the scaling-law fit: JAX grid vs scipy")
    p.add_argument("--finetune", action="store_true",
                   help="only the time-to-F1 benchmark: configs/ner.yaml against transformers' PyTorch recipe")
    p.add_argument("--checkpoint", action="store_true", help="also the checksum pass vs a checkpoint save")
    p.add_argument("--data", action="store_true",
                   help="only the token pipeline: prepare vs today's path, the loader's tokens/s (ours, Grain), "
                        "and the trainer's peak RSS on the 5 MB corpus and on --big-corpus")
    p.add_argument("--big-corpus", default="", help="--data: a directory of .txt files (or a glob), e.g. the "
                   "output of scripts/make_big_corpus.py")
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "scaling_jax_bench_data"),
                   help="--data: where the prepared corpora and runs go (a prepared corpus is reused)")
    p.add_argument("--fresh", action="store_true", help="--data: prepare the corpora again even if done")
    p.add_argument("--rounds", type=int, default=3, help="--data: alternating rounds of prepare vs today's path")
    p.add_argument("--threads", type=int, default=2, help="--data: RAYON_NUM_THREADS for prepare (if unset)")
    p.add_argument("--train-steps", type=int, default=40, help="--data: steps of each lm_tiny training")
    p.add_argument("--loader-steps", type=int, default=2000, help="--data: batches the loader delivers")
    p.add_argument("--coverage", action="store_true",
                   help="only the bootstrap-coverage study: how often the 95%% intervals of the Chinchilla fit "
                        "(pairs and residual bootstrap) and of the IsoFLOP exponent hold the truth")
    p.add_argument("--coverage-sets", type=int, default=100, help="synthetic data sets per coverage row")
    p.add_argument("--kernels", action="store_true",
                   help="also the step under model.kernels=xla and xla_cpu with each CPU trick removed, "
                        "with each one's speed relative to xla_cpu (auto on CPU)")
    p.add_argument("--generate", action="store_true",
                   help="only the generation bench: our KV-cache decode vs transformers' generate, greedy, "
                        "128 new tokens, batch 1 and 8 (on --generate-model)")
    p.add_argument("--generate-model", default="smollm2-135m", help="model directory or alias for --generate")
    p.add_argument("--generate-rounds", type=int, default=3)
    p.add_argument("--generate-dtype", default="float32", choices=("float32", "bfloat16"),
                   help="--generate: both sides' weights, activations and KV cache")
    args = p.parse_args(argv)
    if args.finetune:
        return _print_rows(finetune_bench.run(), args.json)
    if args.coverage:
        return _print_rows(coverage_rows(args.coverage_sets), args.json)
    keep_host_buffers()  # before the first computation, for the whole process: torch's allocations get it too
    if args.data:
        return _print_rows(bench_data.run(args), args.json)
    if args.generate:
        generated = bench_generate(args.generate_model, rounds=args.generate_rounds, dtype=args.generate_dtype)
        return _print_rows(generated, args.json)
    rows: list[dict] = []
    device = jax.devices()[0]
    named = next((v for k, v in NAMED_PEAKS.items() if k.lower() in device.device_kind.lower()), None)
    dtypes = [d for d in args.dtypes.split(",") if d]
    peaks = {d: matmul_peak(d) for d in dtypes}
    rows.append({"name": "matmul_peak", "device": device.device_kind,
                 **{f"{d}_gflops": v / 1e9 for d, v in peaks.items()}, "named_peak_tflops": named and named / 1e12,
                 "tokens_per_s": None, "step_ms": None, "mfu": None,
                 **(cpu_info() if device.platform == "cpu" else {})})
    shape = PRESETS[args.preset]
    ours = {d: prepare_ours(shape, dtype=d, dropout=args.dropout, peak=peaks[d]) for d in dtypes}
    contenders = list(ours.values())
    if args.scan:
        contenders.append(prepare_ours(shape, dropout=args.dropout, peak=peaks.get("float32"), scan=True))
    variants = kernel_contenders(shape, peaks, args.dropout) if args.kernels else []
    contenders += [c for _, c in variants]
    refs = {} if args.no_torch else {d: prepare_torch(shape, dtype=d, dropout=args.dropout, peak=peaks[d])
                                     for d in dtypes}
    refs = {d: c for d, c in refs.items() if c is not None}
    contenders += list(refs.values())
    timed, round_s = time_interleaved(contenders, steps=args.steps)
    for r in timed:  # MFU against the measured matmul rate (`mfu`) and the data sheet's bf16 peak
        flops = next(c.flops for c in contenders if c.name == r["name"])
        r["mfu_named_peak"] = flops / (r["step_ms"] / 1e3) / named if named else None
    rows += timed
    if refs:  # per-round paired ratios (`paired_ratio`), not a ratio of the medians above
        rows.append({"name": f"ratio/{shape.name}", "tokens_per_s": None, "step_ms": None, "mfu": None,
                     **{f"{d}_vs_torch_{d}": paired_ratio(round_s[refs[d].name], round_s[ours[d].name])
                        for d in refs}})
    for dtype, c in variants:  # > 1: the default kernels (auto) are faster than this variant
        base = ours[dtype]
        rows.append({"name": f"ratio/{base.name.split('/', 1)[1]}_vs_{c.name.rsplit('/', 1)[1]}",
                     "tokens_per_s": None, "step_ms": None, "mfu": None,
                     "speedup": paired_ratio(round_s[c.name], round_s[base.name])})
    if args.compile:
        rows += bench_compile()
    if args.checkpoint:
        rows += bench_checkpoint(shape)
    if args.fit:
        for r in run_fit_bench():
            rows.append({"tokens_per_s": None, "step_ms": None, "mfu": None, **r})
    rows.append({"name": "peak_rss", "rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                 "tokens_per_s": None, "step_ms": None, "mfu": None})
    return _print_rows(rows, args.json)


def coverage_rows(n_sets: int) -> list[dict]:
    """scaling/coverage.py's studies as bench rows: the Chinchilla fit's intervals under each
    bootstrap (12 x 12 runs, 2% noise, 100 resamples) and approach 2's (4 budgets x 7 sizes)."""
    rows = []
    for method in ("pairs", "residual"):
        bar = tqdm(total=n_sets, desc=f"coverage/{method}")
        rows.append(measure_coverage(n_sets=n_sets, method=method, on_set=lambda i, n: bar.update(1)))
        bar.close()
    rows.append(measure_isoflop_coverage(n_sets=n_sets))
    return [{"tokens_per_s": None, "step_ms": None, "mfu": None, **r} for r in rows]


def _print_rows(rows: list[dict], as_json: bool) -> int:
    for r in rows:
        _print_row(r, as_json)
    return 0


def _print_row(r: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(r), flush=True)
    else:
        print("  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in r.items()
                        if v is not None), flush=True)


if __name__ == "__main__":
    raise SystemExit(main())
