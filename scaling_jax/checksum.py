"""Checksums of jax.Arrays computed on device, the same for any sharding: what a checkpoint records and verifies."""
from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from scaling_jax.tree import path_str

# murmur3's 32-bit finalizer (Appleby, MurmurHash3 `fmix32`) and the golden-ratio increment.
_FMIX_1, _FMIX_2, _GOLDEN = 0x85EBCA6B, 0xC2B2AE35, 0x9E3779B9
_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32}


def _fmix(h: jax.Array) -> jax.Array:
    h = h ^ (h >> 16)
    h = h * jnp.uint32(_FMIX_1)
    h = h ^ (h >> 13)
    h = h * jnp.uint32(_FMIX_2)
    return h ^ (h >> 16)


def _words(x: jax.Array) -> jax.Array:
    """The array's bits as uint32 words: one per element (8-byte types: two, on a new last axis)."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = np.dtype(x.dtype).itemsize
    if size == 8:
        return lax.bitcast_convert_type(x, jnp.uint32)  # (..., 2)
    if size not in _UINT:
        raise TypeError(f"no checksum for dtype {x.dtype}")
    return lax.bitcast_convert_type(x, _UINT[size]).astype(jnp.uint32)


def _array_checksum(x: jax.Array) -> jax.Array:
    """uint32[2]: two sums mod 2**32 over the elements, each word weighted by a hash of its flat
    index. Sums commute, so the value does not depend on the sharding or the reduction order.
    The first is linear with odd weights: any single flipped bit changes it (by an odd multiple
    of a power of two below 2**32). The second hashes each word with its index, so changes that
    cancel in the first (swapped or rotated values) still show."""
    w = _words(x)
    index = jnp.zeros(w.shape, jnp.uint32)
    stride = 1
    for axis in reversed(range(w.ndim)):  # the row-major flat index, wrapping past 2**32
        index = index + lax.broadcasted_iota(jnp.uint32, w.shape, axis) * jnp.uint32(stride % 2**32)
        stride *= w.shape[axis]
    weight = _fmix(index * jnp.uint32(_GOLDEN) + jnp.uint32(1)) | jnp.uint32(1)
    linear = jnp.sum(w * weight, dtype=jnp.uint32)
    mixed = jnp.sum(_fmix(w ^ _fmix(index + jnp.uint32(_GOLDEN))), dtype=jnp.uint32)
    return jnp.stack([linear, mixed])


@jax.jit
def _tree_checksums(tree: Any) -> Any:
    return jax.tree.map(_array_checksum, tree)


def tree_checksums(tree: Any) -> dict[str, str]:
    """{"a/b/kernel": 16 hex digits} for every array leaf of `tree` (jax.Arrays, any sharding, on
    one or many processes: a collective then, so every process must call it). One jitted pass
    over the arrays on their devices; only 8 bytes per array come to the host."""
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    sums = _tree_checksums([x for _, x in leaves])
    out = {}
    with jax.transfer_guard("allow"):  # 8 bytes per array, on purpose
        for (path, _), s in zip(leaves, sums):
            if not (s.is_fully_addressable or s.sharding.is_fully_replicated):
                raise RuntimeError(f"checksum of {path_str(path)} is not replicated: {s.sharding}")
            a, b = (int(v) for v in np.asarray(s.addressable_data(0)))
            out[path_str(path)] = f"{a:08x}{b:08x}"
    return out


__all__ = ["tree_checksums"]
