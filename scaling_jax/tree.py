"""Pytree paths as "a/b/kernel" strings (`jax.tree_util.keystr`), the names freeze regexes, LoRA
targets, HF key tables and checkpoint messages all use."""
from __future__ import annotations

from typing import Any

import jax


def path_str(path: tuple) -> str:
    """A jax key path as "a/b/kernel" (dict keys, sequence indices and attribute names alike)."""
    return jax.tree_util.keystr(tuple(path), simple=True, separator="/")


def flat_dict(tree: Any, is_leaf=None) -> dict[str, Any]:
    """{"a/b/kernel": leaf} in tree-flatten order."""
    return {path_str(p): x for p, x in jax.tree_util.tree_flatten_with_path(tree, is_leaf=is_leaf)[0]}


def unflat_dict(flat: dict[str, Any]) -> dict:
    """The nested dict of a {"a/b/kernel": leaf} mapping (the inverse of `flat_dict` for dict trees)."""
    out: dict = {}
    for path, x in flat.items():
        *parents, leaf = path.split("/")
        node = out
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = x
    return out


def map_with_path_str(fn, tree: Any, *rest: Any, is_leaf=None) -> Any:
    """`jax.tree_util.tree_map_with_path` with the path given as an "a/b/kernel" string."""
    return jax.tree_util.tree_map_with_path(lambda p, *xs: fn(path_str(p), *xs), tree, *rest, is_leaf=is_leaf)


__all__ = ["path_str", "flat_dict", "unflat_dict", "map_with_path_str"]
