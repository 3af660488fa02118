"""scaling_jax: pure, jitted, sharded JAX/Flax steps; HF BERT/GPT-2/Llama fine-tuning; scaling-law sweeps."""
from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "load_pretrained": "scaling_jax.models",
    "save_pretrained": "scaling_jax.models",
    "init_model": "scaling_jax.models",
    "generate": "scaling_jax.models.generate",
    "TrainState": "scaling_jax.train.state",
    "make_train_step": "scaling_jax.train.step",
    "make_eval_step": "scaling_jax.train.step",
    "train_step": "scaling_jax.train.step",
    "eval_step": "scaling_jax.train.step",
    "init_state": "scaling_jax.train.step",
    "stack_layers": "scaling_jax.train.stacked",
    "make_mesh": "scaling_jax.mesh",
    "batch_sharding": "scaling_jax.mesh",
    "DEFAULT_RULES": "scaling_jax.mesh",
    "load_config": "scaling_jax.config",
}

__all__ = [*_EXPORTS, "scaling"]


def __getattr__(name: str) -> Any:
    # Lazy, so `import scaling_jax` stays cheap and never touches devices before XLA_FLAGS is set.
    if name == "scaling":
        return importlib.import_module("scaling_jax.scaling")
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'scaling_jax' has no attribute {name!r}")
