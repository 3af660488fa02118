"""launch/device_check.sh in its CPU smoke mode (what CI can run; on a GPU the same script runs
the full check): all three parts pass and print what they measured."""
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_device_check_smoke_mode_passes_its_three_parts():
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    out = subprocess.run(["bash", "launch/device_check.sh", "--cpu"], cwd=REPO, env=env, capture_output=True,
                         text=True, timeout=1200)
    assert out.returncode == 0, out.stdout[-4000:] + out.stderr[-4000:]
    text = out.stdout
    assert "1 passed" in text  # the parity case
    assert "name=ours/tiny/float32" in text and "mfu=" in text  # the bench row
    assert "3 of 3 losses, max |diff|" in text and "done: all three parts passed" in text
