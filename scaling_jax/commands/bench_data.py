"""`scaling-jax bench --data`: the token pipeline on its own and under the trainer.

Rows: `prepare` against today's path (each file tokenized as one string in one process, the old
lm_text reader) on the same files, timed in alternating rounds; the loader's tokens/s (our reads,
our prefetching feed with device placement, and Grain's MapDataset where it is installed); and per
corpus (the 5 MB Shakespeare corpus, plus `--big-corpus`, e.g. scripts/make_big_corpus.py's ~2 GB)
the `prepare` wall time and peak RSS, then a short lm_tiny training on it: the trainer's peak RSS
and step tokens/s, each in its own process (os.wait4's rusage).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from scaling_jax.config import load_config
from scaling_jax.data import prepare as prep
from scaling_jax.data.corpus import split_sources
from scaling_jax.data.files import data_root
from scaling_jax.data.sampler import batch_indices
from scaling_jax.data.shards import open_store
from scaling_jax.data.tokenizer import load_tokenizer, tokenizer_dir
from scaling_jax.data.tokens import TokenWindows
from scaling_jax.mesh import batch_sharding, make_mesh
from scaling_jax.train.feed import BatchFeed

CONFIG = Path(__file__).resolve().parents[2] / "configs" / "lm_tiny.yaml"


def todays_path(files: list[Path], tokenizer) -> int:
    """The reader this issue replaced: each file read and tokenized as one string, one process."""
    n = 0
    for f in files:
        ids = np.asarray(tokenizer(Path(f).read_bytes().decode("utf-8", errors="replace"),
                                   add_special_tokens=False)["input_ids"], np.int32)
        n += ids.size + 1
    return n


def bench_prepare(cfg, tokenizer, rounds: int) -> dict:
    """Seconds for today's path and for `prepare_store` (fresh store each round, written and fsynced)
    on the config's training files, alternating; the ratio is the median of per-round ratios."""
    source = split_sources(cfg, tokenizer)["train"]
    files = [Path(f["path"]) for f in source.identity["files"]]
    old, new = [], []
    for _ in range(rounds):
        t = time.perf_counter()
        n_old = todays_path(files, tokenizer)
        old.append(time.perf_counter() - t)
        with tempfile.TemporaryDirectory() as d:
            t = time.perf_counter()
            index = prep.prepare_store(Path(d) / "s", source, tokenizer, progress=False)
            new.append(time.perf_counter() - t)
        assert index["tokens"] == n_old, "prepare and today's path disagree on the token count"
    mb = source.total_bytes / 1e6
    return {"name": "data/prepare_vs_todays_path", "files": len(files), "source_mb": mb, "tokens": n_old,
            "todays_s": statistics.median(old), "prepare_s": statistics.median(new),
            "todays_mb_per_s": mb / statistics.median(old), "prepare_mb_per_s": mb / statistics.median(new),
            "speedup": statistics.median(o / n for o, n in zip(old, new)),
            "rayon_threads": os.environ.get("RAYON_NUM_THREADS", ""), "cpus": os.cpu_count()}


def _grain_tokens_per_s(ds: TokenWindows, batch: int, steps: int, threads: int) -> float | None:
    try:
        import grain
    except ImportError:
        return None

    class Windows:  # grain's random-access source protocol: __len__ and __getitem__
        def __len__(self):
            return len(ds)

        def __getitem__(self, i):
            return ds.take(np.asarray([i]))["input_ids"][0]

    pipe = grain.MapDataset.source(Windows()).shuffle(seed=0).repeat().batch(batch)
    it = iter(pipe.to_iter_dataset(grain.ReadOptions(num_threads=threads, prefetch_buffer_size=max(threads, 1) * 4)))
    next(it)
    t = time.perf_counter()
    for _ in range(steps):
        next(it)
    return steps * batch * ds.seq_len / (time.perf_counter() - t)


def bench_loader(store_dir: Path, seq_len: int, batch: int, steps: int, label: str) -> list[dict]:
    """Tokens/s of the loader alone on a prepared store: the reads (`take` of a step's windows),
    the feed (reads + device placement, background thread), and Grain's MapDataset pipeline."""
    ds = TokenWindows(open_store(store_dir), seq_len)
    bsh = batch_sharding(make_mesh(data=-1))
    seed, rows = 0, []
    t = time.perf_counter()
    for s in range(steps):
        ds.take(batch_indices(s, batch, len(ds), seed))
    rows.append({"name": f"data/loader_reads/{label}", "tokens_per_s": steps * batch * seq_len / (time.perf_counter() - t)})
    t = time.perf_counter()
    with BatchFeed(ds, batch, seed, bsh, 0, steps) as feed:
        for s in range(steps):
            out = feed.get(s)
        out["input_ids"].block_until_ready()
    rows.append({"name": f"data/loader_feed/{label}", "tokens_per_s": steps * batch * seq_len / (time.perf_counter() - t)})
    for threads in (0, 2):
        tps = _grain_tokens_per_s(ds, batch, steps, threads)
        if tps is not None:
            rows.append({"name": f"data/grain_mapdataset_threads{threads}/{label}", "tokens_per_s": tps})
    return rows


def _run_measured(cmd: list[str], log: Path, env: dict | None = None) -> tuple[int, float, float]:
    """(exit status, wall seconds, peak RSS MiB) of one child process."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return proc.returncode, time.perf_counter() - t, usage.ru_maxrss / 1024


def bench_corpus(label: str, train_glob: str, work: Path, steps: int, fresh: bool) -> tuple[list[dict], Path]:
    """Prepares a corpus (kind=tokens, lm_tiny's held-out works as valid) in a child process, then
    trains lm_tiny on it for `steps` steps in another: wall time, peak RSS and step tokens/s."""
    prepared = work / f"prepared_{label}"
    if fresh and prepared.exists():
        shutil.rmtree(prepared)
    reused = (prepared / "train" / "index.json").is_file()
    over = ["data.kind=tokens", f"data.prepared={prepared}", f"data.train=[{train_glob}]"]
    cli = [sys.executable, "-m", "scaling_jax.cli"]
    rc, secs, rss = _run_measured([*cli, "prepare", str(CONFIG), *over], work / f"prepare_{label}.log")
    if rc:
        raise RuntimeError(f"prepare {label} failed; see {work / f'prepare_{label}.log'}")
    lines = [json.loads(x) for x in (work / f"prepare_{label}.log").read_text().splitlines() if x.startswith("{")]
    train = next(x for x in lines if x["split"] == "train")
    rows = [{"name": f"data/prepare/{label}", "source_mb": train["source_bytes"] / 1e6, "tokens": train["tokens"],
             "shards": train["shards"], "prepare_s": train["seconds"], "wall_s": secs, "peak_rss_mib": rss,
             "reused": reused}]  # reused: prepared by an earlier run (checked, not tokenized)
    run_dir = work / f"run_{label}"
    shutil.rmtree(run_dir, ignore_errors=True)
    train_over = [*over, f"run.dir={run_dir}", f"train.steps={steps}", f"train.eval_every={steps}",
                  f"checkpoint.every={steps}", "train.log_every=10"]
    rc, secs, rss = _run_measured([*cli, "train", str(CONFIG), *train_over], work / f"train_{label}.log")
    if rc:
        raise RuntimeError(f"training on {label} failed; see {work / f'train_{label}.log'}")
    logged = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    tps = [r["tokens_per_s"] for r in logged if r["split"] == "train" and r["step"] > 10]  # past the compile
    rows.append({"name": f"data/train_lm_tiny/{label}", "steps": steps, "wall_s": secs, "peak_rss_mib": rss,
                 "step_tokens_per_s": statistics.median(tps) if tps else None})
    return rows, prepared / "train"


def run(args) -> list[dict]:
    os.environ.setdefault("RAYON_NUM_THREADS", str(args.threads))  # before the tokenizer's pool starts
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    cfg = load_config(CONFIG)
    tokenizer = load_tokenizer(tokenizer_dir(cfg))
    rows = [bench_prepare(cfg, tokenizer, args.rounds)]
    corpora = [("shakespeare_5mb", str((data_root(cfg) / cfg.data.train[0]).resolve()))]
    if args.big_corpus:
        big = Path(args.big_corpus).resolve()
        pattern = str(big / "*.txt") if big.is_dir() else str(big)
        if not glob.glob(pattern):
            raise SystemExit(f"--big-corpus: no file matches {pattern}")
        corpora.append(("big", pattern))
    stores, rss, step_tps = {}, {}, None
    for label, pattern in corpora:
        got, store = bench_corpus(label, pattern, work, args.train_steps, args.fresh)
        rows += got
        stores[label] = store
        rss[label] = got[-1]["peak_rss_mib"]
        step_tps = step_tps or got[-1]["step_tokens_per_s"]  # lm_tiny's step on its own corpus
    for label, store in stores.items():
        loader = bench_loader(store, cfg.data.seq_len, cfg.data.batch_size, args.loader_steps, label)
        for r in loader:
            if step_tps:
                r["vs_lm_tiny_step"] = r["tokens_per_s"] / step_tps
        rows += loader
    if len(rss) == 2:
        rows.append({"name": "data/train_peak_rss_difference", "mib": rss["big"] - rss["shakespeare_5mb"],
                     "big_mib": rss["big"], "small_mib": rss["shakespeare_5mb"]})
    return rows
