"""Builds a large plain-text corpus from the Shakespeare works for `scaling-jax bench --data`:
whole works in a fresh random order per file, repeated until the target size (default ~2 GB).

The works lm_tiny holds out for validation (Hamlet, The Tempest) are left out, so a run on the big
corpus validates on text it never trained on. Write it outside the repository (default under
/tmp); never commit it.

    python scripts/make_big_corpus.py [--out /tmp/shakespeare_2gb] [--gb 2.0] [--file-mb 16] [--seed 0]
"""
from __future__ import annotations

import argparse
import os
import random
import sys
from pathlib import Path

HELD_OUT = ("hamlet_gut.txt", "tempest_gut.txt")  # configs/lm_tiny.yaml's data.valid


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.environ.get("SCALING_JAX_DATA", str(Path(__file__).resolve().parents[1].parent
                                                                            / "shared" / "data")))
    p.add_argument("--out", default="/tmp/shakespeare_2gb")
    p.add_argument("--gb", type=float, default=2.0, help="total size in 10^9 bytes")
    p.add_argument("--file-mb", type=float, default=16.0, help="size of each file in 10^6 bytes")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    works = sorted(f for f in (Path(args.data) / "shakespeare").glob("*_gut.txt") if f.name not in HELD_OUT)
    if not works:
        print(f"no *_gut.txt under {args.data}/shakespeare", file=sys.stderr)
        return 2
    texts = [w.read_bytes() for w in works]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rng = random.Random(args.seed)
    total, target, per_file, k = 0, int(args.gb * 1e9), int(args.file_mb * 1e6), 0
    while total < target:
        parts, size = [], 0
        while size < min(per_file, target - total):
            order = list(range(len(texts)))
            rng.shuffle(order)
            for i in order:
                parts.append(texts[i])
                size += len(texts[i])
                if size >= per_file:
                    break
        path = out / f"part_{k:05d}.txt"
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(b"\n\n".join(parts))
        tmp.replace(path)
        total += path.stat().st_size
        k += 1
    print(f"{k} files, {total / 1e9:.2f} GB in {out} ({len(works)} works, {', '.join(HELD_OUT)} held out)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
