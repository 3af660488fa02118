"""Test set-up: 8 fake CPU devices and float32 matmuls, before jax is imported anywhere."""
import os

os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Here, not at the top: it reads JAX_PLATFORMS (set above) and must run before jax computes
# anything (notes/PERFORMANCE.md, entry 17). The module imports no jax.
from scaling_jax.hostmem import keep_host_buffers  # noqa: E402

keep_host_buffers()

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("SCALING_JAX_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The read-only data folder (../shared/data, or $SCALING_JAX_DATA)."""
    assert SHARED_DATA.is_dir(), f"data folder {SHARED_DATA} not found; set SCALING_JAX_DATA"
    return SHARED_DATA
