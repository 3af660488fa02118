"""Data files named by config patterns: globs under `data.root`, held-out files kept apart."""
from __future__ import annotations

import glob
from pathlib import Path
from typing import Sequence

from scaling_jax.config import Config, expand_path
from scaling_jax.errors import MissingFileError


def data_root(cfg: Config) -> Path:
    return expand_path(cfg.data.root)


def resolve_files(patterns: Sequence[str], root: Path, what: str) -> list[Path]:
    """Files matching each pattern (relative to `root` unless absolute), sorted; a pattern that
    matches nothing is an error naming it."""
    files: list[Path] = []
    for pat in patterns:
        p = Path(pat) if Path(pat).is_absolute() else root / pat
        hits = sorted(Path(h) for h in glob.glob(str(p)))
        if not hits:
            raise MissingFileError(f"{what}: no file matches {p} (data.root={root})")
        files.extend(h for h in hits if h not in files)
    return files


def exclude(files: list[Path], held_out: list[Path]) -> list[Path]:
    held = {f.resolve() for f in held_out}
    return [f for f in files if f.resolve() not in held]


def train_files(cfg: Config) -> list[Path]:
    """The training files: data.train's matches without any file that data.valid or data.test
    holds out (whole works stay out of training)."""
    root = data_root(cfg)
    held_out = [*resolve_files(cfg.data.valid, root, "data.valid"), *resolve_files(cfg.data.test, root, "data.test")]
    return exclude(resolve_files(cfg.data.train, root, "data.train"), held_out)
