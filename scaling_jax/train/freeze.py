"""Freeze masks: regexes over "a/b/kernel" param paths -> 'train'/'frozen' labels for `optax.partition`.

Frozen leaves go through `optax.set_to_zero()` inside `optax.partition`, so the optimizer keeps no
state for them (no Adam moments). `optax.freeze` or `chain(adam, masked(set_to_zero(), ...))`
would zero their updates but still hold moments for every leaf.
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
import optax

from scaling_jax.tree import path_str
from scaling_jax.errors import ConfigError

TRAIN, FROZEN = "train", "frozen"

# BERT `embeddings/...`, GPT-2 `wte/`, `wpe/`, Llama `embed_tokens/` (notes/CONTRACTS.md). `(^|/)` lets a prefix such as
# the "base/" of a LoRA tree come first.
EMBEDDINGS = r"(^|/)(embeddings|wte|wpe|embed_tokens)/"
# Task heads and the "lora" half of a {"base", "lora"} tree: what `all_but_head` leaves trainable.
HEAD_OR_LORA = r"(classifier|pooler|cls|score|lora)"
ALL_BUT_HEAD = rf"^(?!(.*/)?{HEAD_OR_LORA}(/|$))"
_LAYER = re.compile(r"(^|/)(?:encoder/layer_|h_|layers_)(\d+)/")
PRESETS = ("embeddings", "bottom:K", "all_but_head")


def param_paths(tree) -> list[str]:
    """Every leaf's path, in tree-flatten order."""
    return [path_str(p) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def leaf_size(x) -> int:
    """Element count of an array or `jax.ShapeDtypeStruct`."""
    return math.prod(x.shape)


def preset_regex(preset: str, paths: Sequence[str]) -> str:
    """The regex a preset stands for; `bottom:K` checks that the model has at least K layers."""
    if preset == "embeddings":
        return EMBEDDINGS
    if preset == "all_but_head":
        return ALL_BUT_HEAD
    if preset.startswith("bottom:"):
        try:
            k = int(preset.split(":", 1)[1])
        except ValueError:
            raise ConfigError(f"freeze preset {preset!r}: K must be an integer, as in 'bottom:4'") from None
        layers = {int(m.group(2)) for p in paths if (m := _LAYER.search(p))}
        if k < 0 or k > len(layers):
            raise ConfigError(f"freeze preset {preset!r}: the model has {len(layers)} layers")
        if k == 0:
            return EMBEDDINGS
        idx = "|".join(str(i) for i in range(k))
        return rf"{EMBEDDINGS}|(^|/)(encoder/layer_|h_|layers_)({idx})/"
    raise ConfigError(f"unknown freeze preset {preset!r}; presets: {PRESETS} or a regex")


def report_lines(report: dict) -> list[str]:
    """A freeze report (from `make_freeze_labels`) as log lines."""
    out = [f"freeze {name!r}: {n:,} params" for name, n in report["matched"].items()]
    total, trainable = report["total_params"], report["trainable_params"]
    share = trainable / total if total else 0.0
    out.append(f"trainable {trainable:,} of {total:,} params ({share:.2%}), "
               f"frozen {report['frozen_params']:,}")
    return out


def make_freeze_labels(params, presets: Sequence[str] = (), regexes: Sequence[str] = ()
                       ) -> tuple[Any, dict]:
    """Label each leaf 'frozen' if its path matches a preset or a regex (`re.search`), else 'train'.

    Returns (labels tree with params' exact structure, report). The report is a JSON-ready dict of
    parameter (element) counts: `matched` {pattern: count} (patterns may overlap), `frozen_params`,
    `trainable_params`, `total_params`. A pattern that matches no parameter raises ValueError
    naming it and a few example paths.
    """
    flat, treedef = jax.tree_util.tree_flatten_with_path(params)
    paths = [path_str(p) for p, _ in flat]
    sizes = [leaf_size(x) for _, x in flat]
    patterns = {p: preset_regex(p, paths) for p in presets}
    for r in regexes:
        try:
            re.compile(r)
        except re.error as e:
            raise ConfigError(f"freeze regex {r!r} is not a valid regex: {e}") from None
        patterns[r] = r
    frozen = [False] * len(paths)
    matched = {}
    for name, rx in patterns.items():
        compiled = re.compile(rx)
        hits = [i for i, p in enumerate(paths) if compiled.search(p)]
        if not hits:
            raise ConfigError(f"freeze pattern {name!r} matches no parameter; example paths: "
                             f"{paths[:3] + paths[-2:] if len(paths) > 5 else paths}")
        matched[name] = sum(sizes[i] for i in hits)
        for i in hits:
            frozen[i] = True
    labels = jax.tree_util.tree_unflatten(treedef, [FROZEN if f else TRAIN for f in frozen])
    n_frozen = sum(s for s, f in zip(sizes, frozen) if f)
    total = sum(sizes)
    return labels, {"matched": matched, "frozen_params": n_frozen,
                    "trainable_params": total - n_frozen, "total_params": total}


def make_optimizer_with_freeze(tx: optax.GradientTransformation, labels) -> optax.GradientTransformation:
    """`tx` on 'train' leaves, `set_to_zero` (and no state) on 'frozen' ones."""
    return optax.partition({TRAIN: tx, FROZEN: optax.set_to_zero()}, labels)


def opt_state_bytes(opt_state) -> int:
    """Bytes held by the arrays (or ShapeDtypeStructs) of an optimizer state."""
    return sum(leaf_size(x) * np.dtype(x.dtype).itemsize
               for x in jax.tree_util.tree_leaves(opt_state) if hasattr(x, "dtype"))
