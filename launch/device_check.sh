#!/usr/bin/env bash
# launch/device_check.sh [--cpu]
#
# The accelerator check, one script. On a machine with an NVIDIA GPU and JAX (CUDA), torch and
# transformers installed, with this repository and the data folder ($SCALING_JAX_DATA, default
# ../shared/data: shakespeare/ and gpt2-tokenizer/), it prints in under 8 minutes:
#   1. the parity tests (our models vs transformers' PyTorch ones, the kernels, forward mode) with
#      JAX on the GPU under jax_default_matmul_precision=highest, tolerances unchanged;
#   2. `scaling-jax bench` for a BERT-base shape (sequence 512) and a GPT-2 124M shape (sequence
#      1024): bf16 compute, dropout 0 so cuDNN's fused attention serves it (the row says which
#      attention ran), tokens/s, MFU against the bf16 matmul rate measured in the same run (`mfu`)
#      and against the data sheet's peak (`mfu_named_peak`);
#   3. 50 steps of configs/lm_tiny.yaml (float32, highest precision), every step's training loss
#      against launch/device_check_golden.json (the same run on a CPU) within 2e-3.
# Without a GPU, or with --cpu, it is a short smoke test of the same three parts (one parity case,
# the tiny bench, 3 steps of lm_tiny against the golden's 3-step run); CI runs it that way.
# Exit status: 0 when every part passes.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
py=$(command -v python3 || command -v python)
mode=gpu
if [[ "${1:-}" == "--cpu" ]] || ! "$py" -c 'import jax, sys; sys.exit(jax.default_backend() != "gpu")' 2>/dev/null; then
    mode=cpu
    export JAX_PLATFORMS=cpu
else
    export JAX_PLATFORMS=""  # the GPU; tests/conftest.py keeps a set value
fi
t0=$SECONDS
step() { echo; echo "[device_check] $* ($((SECONDS - t0)) s in)"; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

step "1/3 parity tests, mode=$mode, jax_default_matmul_precision=highest"
"$py" -c 'import jax; print("jax", jax.__version__, jax.devices())'
if [[ $mode == gpu ]]; then
    tests=(tests/test_models_parity.py tests/test_ops.py tests/test_models_forward_mode.py)
else
    tests=(tests/test_models_parity.py -k "h24-l1-relu and token_classification")
fi
JAX_DEFAULT_MATMUL_PRECISION=highest "$py" -m pytest -q -p no:cacheprovider -o addopts=-ra "${tests[@]}"

step "2/3 bench"
if [[ $mode == gpu ]]; then
    for preset in bert_base gpt2_124m; do
        scaling-jax bench --preset "$preset" --dtypes bfloat16 --dropout 0 --no-torch --steps 20
    done
else
    scaling-jax bench --preset tiny --dtypes float32 --dropout 0 --no-torch --steps 2
fi

step "3/3 configs/lm_tiny.yaml against the CPU golden"
steps=$([[ $mode == gpu ]] && echo 50 || echo 3)
JAX_DEFAULT_MATMUL_PRECISION=highest scaling-jax train configs/lm_tiny.yaml "train.steps=$steps" train.log_every=1 \
    "train.eval_every=$steps" "checkpoint.every=$steps" checkpoint.async_save=false "run.dir=$work/lm_tiny" \
    > "$work/train.log"
"$py" - "$work/lm_tiny/metrics.jsonl" "$steps" <<'PY'
import json, sys
rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
got = [r["loss"] for r in rows if r["split"] == "train"]
want = json.load(open("launch/device_check_golden.json"))[f"steps{sys.argv[2]}"]["train_loss"]
worst = max(abs(a - b) for a, b in zip(got, want)) if len(got) == len(want) else float("inf")
for i, (a, b) in enumerate(zip(got, want), 1):
    if i <= 3 or i % 10 == 0 or i == len(want):
        print(f"step {i:3d}  loss {a:.6f}  cpu golden {b:.6f}  diff {a - b:+.2e}")
print(f"{len(got)} of {len(want)} losses, max |diff| {worst:.3g} (tolerance 2e-3)")
sys.exit(0 if worst <= 2e-3 else 1)
PY
step "done: all three parts passed"
