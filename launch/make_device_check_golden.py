"""Writes launch/device_check_golden.json: the CPU losses launch/device_check.sh compares against.

    JAX_PLATFORMS=cpu python launch/make_device_check_golden.py

Runs configs/lm_tiny.yaml on the CPU for 50 steps and for 3 steps (the check's GPU and smoke
modes), every step's training loss logged, float32 at the highest matmul precision, kernels=xla
(what an accelerator runs; lm_tiny has no dropout, so both backends compute the same numbers).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def losses(steps: int, run_dir: Path) -> list[float]:
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAX_DEFAULT_MATMUL_PRECISION": "highest"}
    subprocess.run(["scaling-jax", "train", "configs/lm_tiny.yaml", f"train.steps={steps}", "train.log_every=1",
                    f"train.eval_every={steps}", f"checkpoint.every={steps}", "checkpoint.async_save=false",
                    "model.kernels=xla", f"run.dir={run_dir}"], cwd=REPO, env=env, check=True,
                   stdout=subprocess.DEVNULL)
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return [r["loss"] for r in rows if r["split"] == "train"]


def main() -> int:
    out = {"made_by": "JAX_PLATFORMS=cpu python launch/make_device_check_golden.py", "config": "configs/lm_tiny.yaml"}
    with tempfile.TemporaryDirectory() as tmp:
        for steps in (50, 3):
            out[f"steps{steps}"] = {"train_loss": losses(steps, Path(tmp) / str(steps))}
    (REPO / "launch" / "device_check_golden.json").write_text(json.dumps(out, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
