"""The kernel boundary: the numerical kernels models call, one backend per `model.kernels` setting.

Models say *what* (a dense layer, attention under a mask, a dropout mask); a `Kernels` says *how*.
`xla` is plain JAX for accelerators (cuDNN attention on NVIDIA GPUs where it qualifies); `xla_cpu`
adds the tricks that pay on XLA:CPU; `auto` is `xla_cpu` when JAX runs on the CPU, else `xla`, so
what an accelerator runs never depends on a CPU trick.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax

from scaling_jax.errors import ConfigError
from scaling_jax.ops import masks, xla, xla_cpu
from scaling_jax.ops.activations import ACTIVATIONS, activation


@dataclass(frozen=True)
class Kernels:
    """One backend's kernels (see `xla.linear`, `xla.attention`, `xla.cached_attention` (decoding over
    a heads-first KV cache), `xla.dropout_mask` for signatures)."""

    name: str
    linear: Callable
    attention: Callable
    dropout_mask: Callable
    cached_attention: Callable = xla.cached_attention


BACKENDS: dict[str, Kernels] = {
    "xla": Kernels("xla", xla.linear, xla.attention, xla.dropout_mask),
    "xla_cpu": Kernels("xla_cpu", xla_cpu.linear, xla_cpu.attention, xla_cpu.dropout_mask),
}
CHOICES = ("auto", *BACKENDS)


def resolve(name: str) -> str:
    """`auto` -> `xla_cpu` when JAX's default backend is the CPU, else `xla`; other names as they are."""
    if name == "auto":
        return "xla_cpu" if jax.default_backend() == "cpu" else "xla"
    if name not in BACKENDS:
        raise ConfigError(f"model.kernels: {name!r} is not one of {', '.join(CHOICES)}")
    return name


def get_kernels(kernels: str | Kernels = "auto") -> Kernels:
    """The `Kernels` named by `kernels` (`auto`, `xla`, `xla_cpu`), or `kernels` itself."""
    return kernels if isinstance(kernels, Kernels) else BACKENDS[resolve(kernels)]


__all__ = ["ACTIVATIONS", "BACKENDS", "CHOICES", "Kernels", "activation", "get_kernels", "masks", "resolve"]
