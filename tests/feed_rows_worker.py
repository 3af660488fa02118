"""`scaling-jax train CONFIG key=value ...` that also records, per step, which rows of the global
batch this process read and which examples they held (tests/test_multihost_e2e.py runs it under
launch/local.sh through SCALING_JAX_CMD). Writes $ROWS_LOG.<process index>.json."""
import json
import os
import sys
from pathlib import Path

from scaling_jax import cli
from scaling_jax.train import feed

log = []
_read = feed.BatchFeed.read


def read(self, step):
    idx, host = _read(self, step)
    log.append({"step": step, "rows": self.rows.tolist(), "examples": idx.tolist(),
                "first_tokens": host["input_ids"][:, 0].tolist()})
    return idx, host


feed.BatchFeed.read = read
status = cli.main(["train", *sys.argv[1:]])
import jax  # noqa: E402  (after training: jax.distributed was initialized there)

Path(f"{os.environ['ROWS_LOG']}.{jax.process_index()}.json").write_text(json.dumps(log))
sys.exit(status)
