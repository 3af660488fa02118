"""`scaling-jax prepare`: the config's corpus tokenized once into memory-mapped shards with an index."""
from __future__ import annotations

import json
import sys
import time

from scaling_jax.config import Config
from scaling_jax.data.corpus import prepare_corpus
from scaling_jax.data.shards import open_store
from scaling_jax.data.tokenizer import load_tokenizer, tokenizer_dir, tokenizer_identity


def prepare_main(cfg: Config) -> int:
    """Prepares each split (a store done already is checked, every checksum, and kept); prints one
    JSON line per split: its store directory, documents, tokens, shards and the seconds taken."""
    tokenizer = load_tokenizer(tokenizer_dir(cfg))
    t = time.perf_counter()
    dirs = prepare_corpus(cfg, tokenizer, progress=True)
    seconds = time.perf_counter() - t
    for split, path in dirs.items():
        ix = open_store(path, tokenizer_identity(tokenizer)).index
        sys.stdout.write(json.dumps({"split": split, "dir": str(path), "documents": ix["documents"],
                                     "tokens": ix["tokens"], "shards": len(ix["shards"]), "dtype": ix["dtype"],
                                     "source_bytes": ix.get("source_bytes"), "seconds": round(seconds, 3)}) + "\n")
    sys.stdout.flush()
    return 0
