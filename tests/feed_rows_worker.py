"""`scaling-jax train CONFIG key=value ...` that also records, per step, which rows of the global
batch this process read and which examples they held (for tests/test_tokens_e2e.py; run under
launch/local.sh through SCALING_JAX_CMD). Writes $ROWS_LOG.<process index>.json."""
import json
import os
import sys
from pathlib import Path

from scaling_jax.config import load_config
from scaling_jax.train import feed
from scaling_jax.train.loop import train

log = []
_read = feed.BatchFeed.read


def read(self, step):
    idx, host = _read(self, step)
    log.append({"step": step, "rows": self.rows.tolist(), "examples": idx.tolist(),
                "first_tokens": host["input_ids"][:, 0].tolist()})
    return idx, host


feed.BatchFeed.read = read
train(load_config(sys.argv[1], sys.argv[2:]))
import jax  # noqa: E402  (after train: jax.distributed was initialized there)

Path(f"{os.environ['ROWS_LOG']}.{jax.process_index()}.json").write_text(json.dumps(log))
