"""Functional LoRA (Hu et al. 2021): low-rank factors beside the params, merged into kernels per call.

No model change: for a targeted kernel W (in, out) at "P/kernel" the LoRA tree holds
"P/a" (in, r) and "P/b" (r, out), and the model runs on W + (alpha / r) · a @ b.
The trainer keeps params = {"base": ..., "lora": ...} and freezes "base" (`lora_labels`).
"""
from __future__ import annotations

import math
import re
from collections.abc import Sequence

import jax
import jax.numpy as jnp

from scaling_jax.train.freeze import make_freeze_labels
from scaling_jax.tree import path_str
from scaling_jax.errors import ConfigError

# Attention q/k/v/output and MLP projections, by the param paths of notes/CONTRACTS.md.
DEFAULT_TARGETS = (
    r"attention/self/(query|key|value)/kernel$",     # BERT
    r"attention/output/dense/kernel$",
    r"intermediate/dense/kernel$",
    r"layer_\d+/output/dense/kernel$",
    r"attn/(query|key|value|c_proj)/kernel$",        # GPT-2
    r"mlp/(c_fc|c_proj)/kernel$",
    r"self_attn/(q_proj|k_proj|v_proj|o_proj)/kernel$",   # Llama / Qwen2 / Mistral
    r"mlp/(gate_proj|up_proj|down_proj)/kernel$",
)
# Base-model leaves that stay trainable beside the LoRA factors: freshly initialised task heads.
DEFAULT_HEADS = ("classifier", "score")


def _compile(targets: str | Sequence[str]) -> re.Pattern:
    if isinstance(targets, str):
        targets = (targets,)
    return re.compile("|".join(f"(?:{t})" for t in targets))


def lora_targets(params, targets_regex: str | Sequence[str] = DEFAULT_TARGETS) -> list[str]:
    """Paths of the kernels `targets_regex` selects (sorted); errors if none or one is not 2-D."""
    rx = _compile(targets_regex)
    found = []
    for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
        name = path_str(path)
        if name.endswith("/kernel") and rx.search(name):
            if len(x.shape) != 2:
                raise ConfigError(f"LoRA target {name} has shape {x.shape}; LoRA needs a 2-D kernel")
            found.append(name)
    if not found:
        raise ConfigError(f"LoRA targets {targets_regex!r} match no kernel")
    return sorted(found)


def init_lora(params, targets_regex: str | Sequence[str] = DEFAULT_TARGETS, rank: int = 8,
              alpha: float = 16.0, rng: jax.Array | None = None) -> dict:
    """LoRA factors for each targeted (in, out) kernel: `a` (in, r) ~ N(0, 1/in), `b` (r, out)
    zeros, so the merged model starts equal to the base model.

    Returns a nested dict at the kernels' module paths ({"encoder": {"layer_0": ... {"query":
    {"a", "b"}}}}). `alpha` is only checked here (merge_lora uses it); `params` may be
    `jax.ShapeDtypeStruct`s (only shapes are read), so `jax.eval_shape` sizes LoRA for free.
    """
    if rank < 1:
        raise ConfigError(f"LoRA rank must be >= 1, got {rank}")
    if alpha <= 0:
        raise ConfigError(f"LoRA alpha must be > 0, got {alpha}")
    if rng is None:
        raise ValueError("init_lora needs an rng key")
    shapes = {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(params)[0]}
    lora: dict = {}
    for i, name in enumerate(lora_targets(params, targets_regex)):
        kernel = shapes[name]
        d_in, d_out = kernel.shape
        a = jax.random.normal(jax.random.fold_in(rng, i), (d_in, rank), kernel.dtype) / math.sqrt(d_in)
        node = lora
        for part in name.split("/")[:-1]:
            node = node.setdefault(part, {})
        node["a"] = a
        node["b"] = jnp.zeros((rank, d_out), kernel.dtype)
    return lora


def merge_lora(params, lora_params, alpha: float, rank: int):
    """params with every LoRA-targeted kernel replaced by kernel + (alpha / rank) · a @ b.

    Pure, jittable and differentiable in both arguments; the tree structure is unchanged.
    """
    factors = {}
    for path, x in jax.tree_util.tree_flatten_with_path(lora_params)[0]:
        name = path_str(path)
        module, _, leaf = name.rpartition("/")
        if leaf not in ("a", "b"):
            raise ValueError(f"unexpected LoRA leaf {name}")
        factors.setdefault(module, {})[leaf] = x
    scale = alpha / rank
    used = set()

    def merge(path, x):
        module, _, leaf = path_str(path).rpartition("/")
        if leaf != "kernel" or module not in factors:
            return x
        used.add(module)
        f = factors[module]
        # HIGHEST: a float32 product even where the default matmul would use TF32/bf16 passes.
        delta = jnp.matmul(f["a"], f["b"], precision=jax.lax.Precision.HIGHEST)
        return x + (scale * delta).astype(x.dtype)

    merged = jax.tree_util.tree_map_with_path(merge, params)
    if missing := sorted(set(factors) - used):
        raise ValueError(f"LoRA factors with no kernel in params: {missing[:5]}")
    return merged


def lora_labels(tree, heads: Sequence[str] = DEFAULT_HEADS) -> tuple[dict, dict]:
    """'train'/'frozen' labels for {"base": params, "lora": lora_params}: all of "lora" and the
    base task heads (`heads`, module names) train, the rest of "base" is frozen. Returns
    (labels, report) as `freeze.make_freeze_labels` does."""
    if set(tree) != {"base", "lora"}:
        raise ValueError(f"expected a tree {{'base': ..., 'lora': ...}}, got keys {sorted(tree)}")
    keep = "|".join(re.escape(h) for h in heads)
    rx = rf"^base/(?!(.*/)?({keep})(/|$))" if heads else r"^base/"
    return make_freeze_labels(tree, regexes=(rx,))
