"""An optax wrapper that updates same-shaped per-layer leaves as one stacked array.

A 12-layer model has 12 copies of each layer's 16 leaves; an optimizer over the per-layer tree
compiles one update kernel per leaf (192), which is most of what a layer scan leaves of a deep
model's compile time. `stack_layers(tx)` groups the leaves whose dict paths differ only in the
number of their outermost numbered key (`layer_0`, `layer_1`... / `h_0`, `h_1`...), stacks each group, runs `tx` on the
stacked tree and hands back per-leaf updates, so the params tree (HF names, freeze presets,
per-layer sharding rules, checkpoints of params) is unchanged; only the optimizer state is
stacked, under keys like `layer_*`.

Exact for transforms that act element by element or through global reductions (AdamW, SGD,
clip_by_global_norm, weight-decay masks by name). Not for per-leaf statistics (LAMB/LARS trust
ratios, Adafactor factoring, Muon), which would see a group as one leaf.
"""
from __future__ import annotations

import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from scaling_jax.mesh import STAR
from scaling_jax.tree import path_str

_NUMBERED = re.compile(r"^(.*)_(\d+)$")


class StackedState(NamedTuple):
    inner: Any


def _starred(parts: tuple[str, ...]) -> tuple[str, ...]:
    """The path with its first numbered key's number starred (`h_3/ln_1/scale` -> `h_*/ln_1/scale`):
    layers are the outermost numbered modules; numbered names inside a layer (ln_1, ln_2) stay apart."""
    for j, p in enumerate(parts):
        m = _NUMBERED.match(p)
        if m:
            return (*parts[:j], f"{m.group(1)}_{STAR}", *parts[j + 1:])
    return parts


def _layer_index(parts: tuple[str, ...]) -> int:
    return next(int(m.group(2)) for m in map(_NUMBERED.match, parts) if m)


def _layout(tree: Any) -> tuple[Any, list[tuple[tuple[str, ...], list[int]]]]:
    """(treedef, [(key path in the stacked tree, leaf indices)]): groups of >= 2 same-shaped leaves
    whose paths differ only in the layer number, in layer order; every other leaf alone."""
    flat, treedef = jax.tree_util.tree_flatten_with_path(tree)
    groups: dict[tuple[str, ...], list[int]] = {}
    parts_of = []
    for i, (path, _) in enumerate(flat):
        parts = tuple(path_str(path).split("/"))
        parts_of.append(parts)
        groups.setdefault(_starred(parts), []).append(i)
    out = []
    for star, idx in groups.items():
        leaves = [flat[i][1] for i in idx]
        same = all(x.shape == leaves[0].shape and x.dtype == leaves[0].dtype for x in leaves)
        if len(idx) > 1 and same:
            out.append((star, sorted(idx, key=lambda i: _layer_index(parts_of[i]))))
        else:
            out.extend((parts_of[i], [i]) for i in idx)
    return treedef, out


def _nest(items: list[tuple[tuple[str, ...], Any]]) -> dict:
    root: dict = {}
    for parts, value in items:
        node = root
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return root


def _get(tree: dict, parts: tuple[str, ...]) -> Any:
    for p in parts:
        tree = tree[p]
    return tree


def _stack(tree: Any, layout) -> dict:
    leaves = jax.tree_util.tree_leaves(tree)
    return _nest([(key, jnp.stack([leaves[i] for i in idx]) if len(idx) > 1 else leaves[idx[0]])
                  for key, idx in layout[1]])


def _unstack(stacked: dict, layout) -> Any:
    treedef, groups = layout
    leaves: list[Any] = [None] * treedef.num_leaves
    for key, idx in groups:
        x = _get(stacked, key)
        if len(idx) > 1:
            for j, i in enumerate(idx):
                leaves[i] = x[j]
        else:
            leaves[idx[0]] = x
    return jax.tree_util.tree_unflatten(treedef, leaves)


def stacked_norm(tree: Any) -> jax.Array:
    """optax.tree.norm(tree) (the global L2 norm) with each layer group reduced as one stacked array."""
    return optax.tree.norm(_stack(tree, _layout(tree)))


def stack_layers(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` applied to per-layer leaves stacked by group (see the module docstring)."""

    def init(params):
        return StackedState(inner.init(_stack(params, _layout(params))))

    def update(updates, state, params=None):
        layout = _layout(updates)
        stacked_params = None if params is None else _stack(params, layout)
        new, inner_state = inner.update(_stack(updates, layout), state.inner, stacked_params)
        return _unstack(new, layout), StackedState(inner_state)

    return optax.GradientTransformation(init, update)


__all__ = ["stack_layers", "stacked_norm", "StackedState"]
