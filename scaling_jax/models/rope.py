"""Rotary position embeddings (Su et al. 2021) and the `rope_scaling` types of HF's modeling_rope_utils."""
from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

from scaling_jax.errors import ConfigError

ROPE_TYPES = ("default", "linear", "llama3", "yarn")
# The keys each type reads (transformers' `_validate_<type>_rope_parameters`); others are an error.
_KEYS = {
    "default": (),
    "linear": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings", "attention_factor", "beta_fast", "beta_slow", "mscale",
             "mscale_all_dim", "truncate"),
}
_REQUIRED = {"default": (), "linear": ("factor",), "llama3": _KEYS["llama3"],
             "yarn": ("factor", "original_max_position_embeddings")}


def normalize_rope_scaling(scaling: dict | None, max_position_embeddings: int, source: str = "rope_scaling"
                           ) -> tuple[tuple[str, object], ...] | None:
    """A config's `rope_scaling` / `rope_parameters` (without `rope_theta`) as sorted (key, value) pairs
    with `rope_type`, or None for plain RoPE. 4.x's `type` is read as `rope_type`; llama3 and yarn
    default `original_max_position_embeddings` to `max_position_embeddings`, as transformers does.
    An unknown type is a ConfigError naming it and the supported ones."""
    if not scaling:
        return None
    d = {k: v for k, v in dict(scaling).items() if k not in ("rope_theta", "type")}
    kind = d.pop("rope_type", None) or dict(scaling).get("type") or "default"
    if kind not in ROPE_TYPES:
        raise ConfigError(f"{source}: rope type {kind!r} is not supported; supported: {', '.join(ROPE_TYPES)}")
    if d.pop("partial_rotary_factor", 1.0) not in (1, 1.0):
        raise ConfigError(f"{source}: partial_rotary_factor other than 1 is not supported")
    unknown = sorted(set(d) - set(_KEYS[kind]))
    if unknown:
        raise ConfigError(f"{source}: key {unknown[0]!r} is not read by rope type {kind!r} "
                          f"(its keys: {', '.join(_KEYS[kind]) or 'none'})")
    if kind in ("llama3", "yarn"):
        d.setdefault("original_max_position_embeddings", max_position_embeddings)
    missing = [k for k in _REQUIRED[kind] if d.get(k) is None]
    if missing:
        raise ConfigError(f"{source}: rope type {kind!r} needs {missing[0]!r}")
    if kind == "default":
        return None
    return tuple(sorted({"rope_type": kind, **d}.items()))


def inv_frequencies(head_dim: int, theta: float, scaling: tuple | None) -> tuple[np.ndarray, float]:
    """(inverse frequencies (head_dim/2,) float32, attention factor that multiplies cos and sin).

    Float32 as transformers computes them (`_compute_*_parameters` in modeling_rope_utils), so
    positions in the thousands rotate alike.
    """
    p = dict(scaling or ())
    kind = p.get("rope_type", "default")
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    if kind == "default":
        return inv, 1.0
    factor = float(p["factor"])
    if kind == "linear":
        return (inv / np.float32(factor)).astype(np.float32), 1.0
    if kind == "llama3":  # Llama 3.1's smooth interpolation between low and high frequencies
        old = float(p["original_max_position_embeddings"])
        low, high = float(p["low_freq_factor"]), float(p["high_freq_factor"])
        wavelen = (2 * math.pi / inv).astype(np.float32)
        scaled = np.where(wavelen > old / low, inv / np.float32(factor), inv).astype(np.float32)
        smooth = ((old / wavelen - low) / (high - low)).astype(np.float32)
        smoothed = ((1 - smooth) * scaled / np.float32(factor) + smooth * scaled).astype(np.float32)
        medium = ~(wavelen < old / high) & ~(wavelen > old / low)
        return np.where(medium, smoothed, scaled).astype(np.float32), 1.0
    # yarn (Peng et al. 2023, "YaRN"): per-dimension blend of interpolated and extrapolated frequencies.
    orig = float(p["original_max_position_embeddings"])

    def mscale(scale: float, m: float = 1.0) -> float:
        return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0

    attention_factor = p.get("attention_factor")
    if attention_factor is None:
        if p.get("mscale") and p.get("mscale_all_dim"):
            attention_factor = mscale(factor, p["mscale"]) / mscale(factor, p["mscale_all_dim"])
        else:
            attention_factor = mscale(factor)
    beta_fast, beta_slow = p.get("beta_fast") or 32, p.get("beta_slow") or 1
    dim = head_dim

    def correction_dim(rotations: float) -> float:
        return (dim * math.log(orig / (rotations * 2 * math.pi))) / (2 * math.log(theta))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if p.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = np.clip((np.arange(dim // 2, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo), 0, 1)
    extrapolation = (1 - ramp).astype(np.float32)
    pos_freqs = (np.float32(theta) ** (np.arange(0, dim, 2).astype(np.float32) / np.float32(dim))).astype(np.float32)
    inv_extra = (np.float32(1.0) / pos_freqs).astype(np.float32)
    inv_inter = (np.float32(1.0) / (np.float32(factor) * pos_freqs)).astype(np.float32)
    inv = inv_inter * (1 - extrapolation) + inv_extra * extrapolation
    return inv.astype(np.float32), float(attention_factor)


def rope_tables(positions_BxT: jax.Array, inv_freq_F: np.ndarray, attention_factor: float
                ) -> tuple[jax.Array, jax.Array]:
    """cos and sin B x T x H (H = 2F: the frequencies repeated, HF's `cat(freqs, freqs)`), float32.
    `positions_BxT` are explicit (left padding, packed rows restart them per segment)."""
    freqs_BxTxF = positions_BxT.astype(jnp.float32)[..., None] * jnp.asarray(inv_freq_F, jnp.float32)
    emb_BxTxH = jnp.concatenate([freqs_BxTxF, freqs_BxTxF], axis=-1)
    return jnp.cos(emb_BxTxH) * attention_factor, jnp.sin(emb_BxTxH) * attention_factor


def apply_rope(x_BxTxNxH: jax.Array, cos_BxTxH: jax.Array, sin_BxTxH: jax.Array) -> jax.Array:
    """x cos + rotate_half(x) sin (HF's `apply_rotary_pos_emb`: halves, not interleaved pairs), in float32."""
    x = x_BxTxNxH.astype(jnp.float32)
    half = x.shape[-1] // 2
    rotated = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
    out = x * cos_BxTxH[:, :, None] + rotated * sin_BxTxH[:, :, None]
    return out.astype(x_BxTxNxH.dtype)


__all__ = ["ROPE_TYPES", "normalize_rope_scaling", "inv_frequencies", "rope_tables", "apply_rope"]
