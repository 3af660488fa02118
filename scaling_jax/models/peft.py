"""LoRA factors as a PEFT adapter directory (adapter_config.json + adapter_model.safetensors) that
`peft.PeftModel.from_pretrained` loads onto the transformers base model."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax
import numpy as np

from scaling_jax.errors import ConfigError, OutputExistsError
from scaling_jax.models.hf import LINEAR, Pretrained, family_of
from scaling_jax.tree import flat_dict

# PEFT's task_type per our task (peft.TaskType names).
PEFT_TASKS = {"causal_lm": "CAUSAL_LM", "sequence_classification": "SEQ_CLS", "token_classification": "TOKEN_CLS",
              "base": "FEATURE_EXTRACTION"}


def adapter_tensors(model: Pretrained, lora_params: Any) -> tuple[dict[str, np.ndarray], list[str]]:
    """{PEFT key: array} and the target module names. Our factor `a` (in, r) is PEFT's lora_A.weight
    (r, in) and `b` (r, out) its lora_B.weight (out, r), under `base_model.model.<HF module>`; only
    torch Linear targets (transposed kernels) map one to one, so GPT-2's fused Conv1D `c_attn` is refused."""
    family = family_of(model.config)
    factors: dict[str, dict[str, np.ndarray]] = {}
    for path, x in flat_dict(lora_params).items():
        module, _, leaf = path.rpartition("/")
        factors.setdefault(module, {})[leaf] = np.asarray(jax.device_get(x), np.float32)
    out, targets = {}, set()
    for module, f in sorted(factors.items()):
        hf_key, layout = family.hf_key(f"{module}/kernel")
        if layout != LINEAR:
            raise ConfigError(f"PEFT export: LoRA on {module} (HF {hf_key}) is not a torch Linear; export the "
                              f"merged model instead")
        name = hf_key.rsplit(".", 1)[0]
        if model.task == "base" and name.startswith(family.prefix):
            name = name[len(family.prefix):]
        out[f"base_model.model.{name}.lora_A.weight"] = np.ascontiguousarray(f["a"].T)
        out[f"base_model.model.{name}.lora_B.weight"] = np.ascontiguousarray(f["b"].T)
        targets.add(name.rsplit(".", 1)[1])
    if not out:
        raise ConfigError("PEFT export: no LoRA factors")
    return out, sorted(targets)


def save_peft_adapter(model: Pretrained, lora_params: Any, out_dir: str | os.PathLike, *, rank: int, alpha: float,
                      base_model: str | os.PathLike | None = None) -> Path:
    """Writes `out_dir` as a PEFT LoRA adapter for `model`'s HF base (scaling alpha / rank, as
    `train/lora.merge_lora`); atomic, like `save_pretrained`. Heads trained beside LoRA are not in
    an adapter: export the merged model for those."""
    from safetensors.numpy import save_file
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not (out / "adapter_config.json").is_file())):
        raise OutputExistsError(f"{out}: exists and is not an adapter directory; refusing to overwrite it")
    tensors, targets = adapter_tensors(model, lora_params)
    base = base_model if base_model is not None else model.source_dir
    config = {"peft_type": "LORA", "task_type": PEFT_TASKS[model.task], "r": int(rank), "lora_alpha": float(alpha),
              "target_modules": targets, "lora_dropout": 0.0, "bias": "none", "fan_in_fan_out": False,
              "use_rslora": False, "use_dora": False, "init_lora_weights": True, "inference_mode": True,
              "modules_to_save": None, "base_model_name_or_path": str(base) if base is not None else None}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        save_file(tensors, str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
        (tmp / "adapter_config.json").write_text(json.dumps(config, indent=2) + "\n")
        if out.exists():
            shutil.rmtree(out)
        os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


__all__ = ["adapter_tensors", "save_peft_adapter", "PEFT_TASKS"]
