"""Hugging Face config.json dicts <-> our frozen architecture dataclasses."""
from __future__ import annotations

import dataclasses
from typing import Any

from scaling_jax.errors import ConfigError


def config_from_hf_dict(cls: type, d: dict, model_type: str) -> Any:
    """A frozen config dataclass from an HF config.json dict: keys that are not fields are ignored,
    JSON lists become tuples (hashable), and a different `model_type` is an error."""
    found = d.get("model_type", model_type)
    if found != model_type:
        raise ConfigError(f"config model_type {found!r} is not {model_type!r}")
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items() if k in names})


def config_to_hf_dict(config: Any, model_type: str) -> dict:
    """The HF config.json fields of a config dataclass (tuples back to JSON lists)."""
    out = {"model_type": model_type}
    for f in dataclasses.fields(config):
        v = getattr(config, f.name)
        out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def check_heads(hidden: int, heads: int, what: str) -> None:
    if heads <= 0 or hidden % heads:
        raise ConfigError(f"{what}: hidden size {hidden} is not divisible by {heads} attention heads")


__all__ = ["config_from_hf_dict", "config_to_hf_dict", "check_heads"]
