"""muP's per-group Adam learning rates (Yang et al. 2022, Table 8): hidden matrices at lr * base / width, the
rest at lr, as two optimizers in one `optax.partition` with labels from parameter paths."""
from __future__ import annotations

import math
import re
from typing import Any, Callable

import jax
import optax

from scaling_jax.errors import ConfigError
from scaling_jax.models.parametrization import HIDDEN_KERNELS, Parametrization
from scaling_jax.tree import map_with_path_str, path_str

HIDDEN, BASE = "hidden", "base"
_HIDDEN = re.compile(HIDDEN_KERNELS)


def mup_labels(params: Any) -> Any:
    """'hidden' for the hidden matrices (kernels inside a numbered layer: HIDDEN_KERNELS), 'base'
    for embeddings, norms, biases and heads. A function of the tree, so it labels the per-layer
    tree and the stacked one (`h_*/...`, train/stacked.py) alike."""
    return map_with_path_str(lambda path, _: HIDDEN if _HIDDEN.search(path) else BASE, params)


def mup_report(params: Any, parametrization: Parametrization, width: int) -> dict:
    """{hidden_params, base_params, hidden_lr_multiplier}: what the learning-rate groups hold.
    Raises ConfigError when no parameter is a hidden matrix (muP would change nothing)."""
    counts = {HIDDEN: 0, BASE: 0}
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        counts[HIDDEN if _HIDDEN.search(path_str(path)) else BASE] += math.prod(x.shape)
    if not counts[HIDDEN]:
        raise ConfigError(f"model.parametrization=mup: no parameter matches the hidden-matrix pattern "
                          f"{HIDDEN_KERNELS!r}")
    return {"hidden_params": counts[HIDDEN], "base_params": counts[BASE],
            "hidden_lr_multiplier": parametrization.hidden_lr_multiplier(width)}


def mup_partition(make_core: Callable[[optax.Schedule], optax.GradientTransformation], schedule: optax.Schedule,
                  hidden_lr_multiplier: float) -> optax.GradientTransformation:
    """`make_core(schedule)` (AdamW, SGD) on the base group and `make_core(schedule x multiplier)` on
    the hidden matrices: each group its own optimizer and moments, nothing written by hand."""
    hidden_schedule = lambda step: schedule(step) * hidden_lr_multiplier
    return optax.partition({HIDDEN: make_core(hidden_schedule), BASE: make_core(schedule)}, mup_labels)


__all__ = ["BASE", "HIDDEN", "mup_labels", "mup_partition", "mup_report"]
