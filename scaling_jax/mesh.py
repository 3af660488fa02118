"""The device mesh, the logical-axis rule table, and NamedShardings for params, optimizer state and batches."""
from __future__ import annotations

import logging
import math
import re
from typing import Any, Mapping, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from scaling_jax.errors import MeshError

log = logging.getLogger(__name__)

MESH_AXES = ("data", "fsdp", "tensor")

# Logical name -> mesh axis (or axes, or None = replicated). The one place that knows both vocabularies.
# Batch is split over data and fsdp (FSDP is data parallelism whose params are also sharded);
# weights are sharded over fsdp along `embed` and over tensor along heads / mlp / vocab (Megatron).
DEFAULT_RULES: dict[str, Any] = {
    "batch": ("data", "fsdp"),
    "length": None,
    "vocab": "tensor",
    "embed": "fsdp",
    "heads": "tensor",
    "kv": None,
    "mlp": "tensor",
    "norm": None,
    "classes": None,
    "layers": None,
}


def mesh_shape(data: int, fsdp: int, tensor: int, n_devices: int) -> tuple[int, int, int]:
    """Resolves one -1 axis to the devices left over; checks the product equals `n_devices`."""
    sizes = [data, fsdp, tensor]
    if sizes.count(-1) > 1:
        raise MeshError(f"at most one mesh axis may be -1, got data={data} fsdp={fsdp} tensor={tensor}")
    if -1 in sizes:
        known = math.prod(s for s in sizes if s != -1)
        if n_devices % known:
            raise MeshError(
                f"mesh data={data} fsdp={fsdp} tensor={tensor}: {known} does not divide the "
                f"{n_devices} devices")
        sizes[sizes.index(-1)] = n_devices // known
    if math.prod(sizes) != n_devices:
        raise MeshError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} = {math.prod(sizes)} devices, "
            f"but {n_devices} are available; the product must equal the device count (use -1 for one axis)")
    return tuple(sizes)


def make_mesh(data: int = -1, fsdp: int = 1, tensor: int = 1,
              devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A (data, fsdp, tensor) mesh over `devices` (default: all), with Auto axes.

    `jax.make_mesh` would default to Explicit axes; we want GSPMD's automatic propagation inside the
    step, with shardings fixed only at the jit boundary, so every axis is `AxisType.Auto`.
    """
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(data, fsdp, tensor, len(devices))
    if len(devices) == len(jax.devices()):
        return jax.make_mesh(shape, MESH_AXES, axis_types=(AxisType.Auto,) * 3, devices=devices)
    return Mesh(np.asarray(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def merge_rules(overrides: Mapping[str, Any] | None) -> dict[str, Any]:
    """DEFAULT_RULES updated by a config's `mesh.rules`; unknown mesh axes are an error."""
    rules = dict(DEFAULT_RULES)
    for name, axes in (overrides or {}).items():
        for a in _as_tuple(axes):
            if a not in MESH_AXES:
                raise MeshError(f"mesh.rules.{name}: unknown mesh axis {a!r}; valid: {', '.join(MESH_AXES)}")
        rules[name] = tuple(axes) if isinstance(axes, list) else axes
    return rules


def _as_tuple(axes: Any) -> tuple:
    if axes is None:
        return ()
    return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def logical_to_mesh_spec(logical: P | Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                         rules: Mapping[str, Any]) -> P:
    """Maps a PartitionSpec of logical names to mesh axes for an array of `shape`.

    A dimension that the mesh axes do not divide evenly is replicated instead (e.g. MiniLM's vocab
    30522 over tensor=4), and a mesh axis is used at most once per array.
    """
    used: set[str] = set()
    out = []
    logical = tuple(logical) + (None,) * (len(shape) - len(tuple(logical)))
    for dim, name in zip(shape, logical):
        if name is None:
            out.append(None)
            continue
        if name not in rules:
            raise MeshError(f"logical axis {name!r} has no rule; known: {', '.join(rules)}")
        axes = tuple(a for a in _as_tuple(rules[name]) if a not in used and mesh.shape[a] > 1)
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or dim % size:
            out.append(None)
            continue
        used.update(axes)
        out.append(axes[0] if len(axes) == 1 else axes)
    return P(*out)


def shardings_from_logical(abstract: Any, logical: Any, mesh: Mesh, rules: Mapping[str, Any]) -> Any:
    """NamedShardings for a tree of arrays/ShapeDtypeStructs given a matching tree of logical specs."""
    return jax.tree.map(
        lambda x, spec: NamedSharding(mesh, logical_to_mesh_spec(spec, x.shape, mesh, rules)),
        abstract, logical, is_leaf=lambda x: isinstance(x, P))


STAR = "*"  # the layer number in the keys of stacked optimizer state (train/stacked.py)


def _dict_path(path: tuple) -> tuple:
    return tuple(k.key for k in path if isinstance(k, jax.tree_util.DictKey))


def _stacked_member_sharding(parts: tuple[str, ...], shape: tuple[int, ...],
                             by_path: dict[tuple[str, ...], tuple[tuple[int, ...], Any]]) -> Any | None:
    """For a leaf stacked by train/stacked.py `stack_layers` (a `name_*` key in its path, shape
    [n, *param shape]): the sharding of a member, whose path matches with `*` as a number; else None."""
    if not any(p.endswith("_" + STAR) for p in parts) or not shape:
        return None
    pattern = re.compile("^" + "/".join(re.escape(p).replace(re.escape(STAR), r"\d+") for p in parts) + "$")
    for path, (pshape, sharding) in by_path.items():
        if pshape == tuple(shape[1:]) and pattern.match("/".join(path)):
            return sharding
    return None


def state_shardings_like_params(tree: Any, params_abstract: Any, params_sharding: Any, mesh: Mesh) -> Any:
    """Shardings for any tree holding copies of params (optimizer moments, LoRA, masked states).

    A leaf whose dict-key path ends with a parameter's path and whose shape equals it gets that
    parameter's sharding (the suffix match skips combinator keys such as optax.partition's
    'train'); a leaf stacked by `stack_layers` (a `name_*` key, shape [n, *param shape]) gets its
    members' sharding with the stacking axis unsplit; all other leaves (counts, scalars, optax
    states not shaped like params) are replicated. Matching by path rather than by tree structure
    works for every optax combinator (partition, masked, chain).
    """
    by_path = {}
    for (path, x), (_, s) in zip(jax.tree_util.tree_leaves_with_path(params_abstract),
                                 jax.tree_util.tree_leaves_with_path(params_sharding)):
        by_path[_dict_path(path)] = (tuple(x.shape), s)
    replicated = NamedSharding(mesh, P())

    def pick(path, x):
        parts, shape = _dict_path(path), tuple(getattr(x, "shape", ()))
        for k in range(len(parts)):
            hit = by_path.get(parts[k:])
            if hit is not None and hit[0] == shape:
                return hit[1]
            member = _stacked_member_sharding(parts[k:], shape, by_path)
            if member is not None:
                return NamedSharding(mesh, P(None, *member.spec))
        return replicated

    return jax.tree_util.tree_map_with_path(pick, tree)


def batch_sharding(mesh: Mesh, rules: Mapping[str, Any] | None = None) -> NamedSharding:
    """Leading (batch) dim split over the batch rule's axes (data, fsdp); other dims replicated."""
    rules = rules or DEFAULT_RULES
    axes = tuple(a for a in _as_tuple(rules["batch"]) if mesh.shape[a] > 1)
    return NamedSharding(mesh, P(axes if axes else None))


def batch_divisor(mesh: Mesh, rules: Mapping[str, Any] | None = None) -> int:
    rules = rules or DEFAULT_RULES
    return math.prod(mesh.shape[a] for a in _as_tuple(rules["batch"]))


def check_batch(batch_size: int, mesh: Mesh, rules: Mapping[str, Any] | None = None, what: str = "batch") -> None:
    d = batch_divisor(mesh, rules)
    if batch_size % d:
        raise MeshError(
            f"{what} size {batch_size} does not divide over the mesh's batch axes "
            f"(data={mesh.shape['data']} x fsdp={mesh.shape['fsdp']} = {d}); use a multiple of {d}")
