"""Typed, frozen run configs: YAML files plus dotted `key=value` overrides, validated with clear errors."""
from __future__ import annotations

import dataclasses
import math
import os
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from scaling_jax.errors import ConfigError


@dataclass(frozen=True)
class RunConfig:
    name: str = "run"
    dir: str = ""  # default: runs/<name>


@dataclass(frozen=True)
class ModelConfig:
    family: str = "gpt2"  # gpt2 | bert | llama (from scratch; a pretrained model's config.json decides)
    pretrained: str = ""  # local HF directory, or an alias such as "minilm-l6"; "" = from scratch
    task: str = "causal_lm"  # causal_lm | token_classification | sequence_classification | masked_lm
    num_labels: int = 0  # 0 = read from the data
    # Sizes for a model built from scratch (ignored when `pretrained` is set).
    vocab_size: int = 50257
    d_model: int = 128
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int = 0  # llama: key/value heads (grouped-query attention); 0 = n_heads
    d_ff: int = 0  # 0 = 4 * d_model
    max_len: int = 256
    dropout: float = 0.0
    dtype: str = "float32"  # compute dtype: float32 | bfloat16 (parameters stay float32)
    kernels: str = "auto"  # ops backend: auto (xla_cpu on CPU, else xla) | xla | xla_cpu
    remat: bool = False  # recompute each layer's activations in the backward pass
    remat_policy: str = ""  # "" = by remat / scan_layers; else a jax.checkpoint_policies name (see README)
    scan_layers: bool = False  # true: one compiled layer under lax.scan + optimizer over stacked layers (compile time)
    lora_rank: int = 0  # 0 = no LoRA
    lora_alpha: float = 16.0
    lora_targets: str = ""  # regex over param paths; "" = attention and MLP projections
    parametrization: str = "sp"  # sp | mup (Yang et al. 2022; models/parametrization.py, train/mup.py)
    base_width: int = 0  # muP: the d_model at which muP equals SP (whose learning rate transfers); 0 = unset


@dataclass(frozen=True)
class DataConfig:
    kind: str = "lm_text"  # lm_text (text files, prepared into the token cache on first use) | tokens | conll | classification
    root: str = "${SCALING_JAX_DATA:-../shared/data}"
    train: tuple[str, ...] = ()  # files or globs, relative to root unless absolute
    valid: tuple[str, ...] = ()
    test: tuple[str, ...] = ()
    tokenizer: str = ""  # a local tokenizer directory; "" = the pretrained model's own
    bpe_vocab: int = 0  # >0: train a byte-level BPE of this many pieces (257 = bytes) on data.train into data.tokenizer
    seq_len: int = 128
    batch_size: int = 16  # global batch, in sequences
    eval_batch_size: int = 32
    max_eval_batches: int = 0  # 0 = the whole split (NER always reads the whole split)
    pack: bool | None = None  # pack training examples into rows (segment ids); null = on for conll / classification
    eval_buckets: int = 4  # eval / predict in this many static lengths up to seq_len (1 = pad to seq_len)
    text_field: str = "text"
    label_field: str = "label"
    # Token corpora (`scaling-jax prepare`): the prepared directory (one store per split; lm_text's
    # default "" = the token cache), a `datasets` source instead of files, whole documents held out.
    prepared: str = ""  # data.kind=tokens reads it; `prepare` writes it
    source: str = ""  # a `datasets` name, data folder or saved dataset; "" = the data.train/valid/test files
    valid_documents: int = 0  # validate on the train split's last N documents (0 = the valid split)


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 100
    seed: int = 0
    eval_every: int = 50
    log_every: int = 10
    grad_accum: int = 1
    early_stopping_metric: str = ""  # e.g. eval/f1; "" = off
    early_stopping_mode: str = "max"  # max | min
    patience: int = 0  # evals without improvement before stopping; 0 = off
    nan_policy: str = "stop"  # stop | skip
    eval_test: bool = False  # also score the test split at every eval (logged, never used to choose)


@dataclass(frozen=True)
class OptimConfig:
    name: str = "adamw"  # adamw | sgd
    lr: float = 3e-4
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    warmup_steps: int = 0
    schedule: str = "cosine"  # cosine | linear | constant
    end_lr_ratio: float = 0.0
    clip_norm: float = 1.0  # 0 = no clipping
    freeze: tuple[str, ...] = ()  # presets: embeddings, bottom:K, all_but_head
    freeze_regex: tuple[str, ...] = ()


@dataclass(frozen=True)
class MeshConfig:
    data: int = -1  # -1 takes the devices left over
    fsdp: int = 1
    tensor: int = 1
    rules: dict[str, Any] = field(default_factory=dict)  # logical name -> mesh axis / list / null


@dataclass(frozen=True)
class CheckpointConfig:
    every: int = 0  # 0 = only at the end
    max_to_keep: int = 2
    best_k: int = 1
    async_save: bool = True


@dataclass(frozen=True)
class DistributedConfig:
    coordinator: str = ""
    num_processes: int = 0
    process_id: int = -1
    timeout_s: int = 0  # seconds to wait for peers; 0 = $SCALING_JAX_INIT_TIMEOUT_S, else jax's 300


@dataclass(frozen=True)
class SweepConfig:
    widths: tuple[int, ...] = ()  # d_model of each member
    aspect_ratio: int = 32  # d_model / n_layers
    n_layers: int = 0  # every member this deep (a width-only family, as muP transfer assumes); 0 = by aspect_ratio
    head_dim: int = 32
    tokens: int = 0  # training tokens per member (steps = tokens / (batch * seq_len))
    budgets: tuple[float, ...] = ()  # IsoFLOP: training FLOPs per run (scaling_jax.flops); each width's tokens meet it
    min_steps: int = 10  # IsoFLOP: a width meets a budget only with at least this many steps
    max_tokens: int = 0  # IsoFLOP: ... and at most this many training tokens (0 = no limit)
    lr_grid: tuple[float, ...] = ()  # learning-rate sweep: every member trained at each of these optim.lr values
    lr_rule: str = "constant"  # constant | inverse_width (lr * base_width / d_model)
    base_width: int = 128
    member: int = -1  # run only this member (cluster job arrays); -1 = all, in sequence
    results: str = ""  # default: <run.dir>/results.csv


@dataclass(frozen=True)
class Config:
    run: RunConfig = field(default_factory=RunConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    mesh: MeshConfig = field(default_factory=MeshConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    distributed: DistributedConfig = field(default_factory=DistributedConfig)
    sweep: SweepConfig = field(default_factory=SweepConfig)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir or f"runs/{self.run.name}")


# The names `model.remat_policy` and `model.kernels` accept: models.layers.REMAT_POLICIES and
# ops.CHOICES (the core does not import those layers; tests/test_config.py checks they agree).
REMAT_POLICIES = ("nothing_saveable", "everything_saveable", "dots_saveable", "dots_with_no_batch_dims_saveable")
KERNELS = ("auto", "xla", "xla_cpu")

_CHOICES = {
    "model.family": ("gpt2", "bert", "llama"),
    "model.task": ("causal_lm", "token_classification", "sequence_classification", "masked_lm"),
    "model.dtype": ("float32", "bfloat16"),
    "model.remat_policy": ("", *REMAT_POLICIES),
    "model.kernels": KERNELS,
    "model.parametrization": ("sp", "mup"),
    "data.kind": ("lm_text", "tokens", "conll", "classification"),
    "train.early_stopping_mode": ("max", "min"),
    "train.nan_policy": ("stop", "skip"),
    "optim.name": ("adamw", "sgd"),
    "optim.schedule": ("cosine", "linear", "constant"),
    "sweep.lr_rule": ("constant", "inverse_width"),
}


_EXPONENT_NUMBER = re.compile(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+")


def _check_value(key: str, value: Any, tp: Any) -> Any:
    """Coerces `value` to the annotated type `tp` or raises a ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        errors = []
        for option in typing.get_args(tp):
            try:
                return _check_value(key, value, option)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0])
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{key}: expected null, got {value!r}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item_tp, *_rest) = typing.get_args(tp)
        return tuple(_check_value(f"{key}[{i}]", v, item_tp) for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str) and _EXPONENT_NUMBER.fullmatch(value.strip()):  # YAML 1.1 reads 1e-3 as text
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    if tp is Any:
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _build(cls: type, data: dict, prefix: str = "") -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise ConfigError(
            f"unknown config key '{prefix}{unknown[0]}'; valid keys"
            f"{' under ' + prefix.rstrip('.') if prefix else ''}: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name not in data:
            continue
        tp, key = hints[name], f"{prefix}{name}"
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, data[name] or {}, key + ".")
        else:
            value = _check_value(key, data[name], tp)
            if key in _CHOICES and value not in _CHOICES[key]:
                raise ConfigError(f"{key}: {value!r} is not one of {', '.join(_CHOICES[key])}")
            kwargs[name] = value
    return cls(**kwargs)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {key}: '{p}' is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=3e-4' -> ('optim.lr', 0.0003); the value is read as YAML (numbers, lists, null)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} must look like key=value (e.g. train.steps=100)")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not re.fullmatch(r"[a-z_]+(\.[a-z_0-9]+)+", key):
        raise ConfigError(f"override key {key!r} must be dotted, like train.steps")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    # YAML 1.1 reads '3e-4' as a string; accept it as a number.
    if isinstance(value, str):
        try:
            value = float(value) if re.fullmatch(r"[-+]?\d+(\.\d*)?[eE][-+]?\d+", value) else value
        except ValueError:
            pass
    return key, value


def config_from_dict(data: dict, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    data = _deepcopy_dict(data or {})
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(data, key, value)
    cfg = _build(Config, data)
    validate(cfg)
    return cfg


def _deepcopy_dict(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy_dict(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy_dict(v) for v in d]
    return d


def load_config(path: str | os.PathLike, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Reads a YAML config, applies `key=value` overrides, validates. `run.name` defaults to the file stem."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        what = " ".join(str(getattr(e, "problem", None) or e).split())
        raise ConfigError(f"{where}: not valid YAML: {what}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections (run:, model:, data:, ...), "
                          f"got a {type(data).__name__}")
    run = data.setdefault("run", {})
    if isinstance(run, dict):
        run.setdefault("name", path.stem)
    return config_from_dict(data, overrides)


def packs(cfg: Config) -> bool:
    """Whether the training split is packed: `data.pack`, by default on where it saves padding
    (conll, classification: short examples padded to seq_len), off for lm_text (full windows)."""
    return cfg.data.kind in ("conll", "classification") if cfg.data.pack is None else cfg.data.pack


def validate(cfg: Config) -> None:
    """Cross-field checks that types alone cannot express: sizes and cadences, finite rates,
    lengths that fit the model. Every error names the key (or keys) at fault."""
    at_least = {  # key: (value, minimum)
        "train.steps": (cfg.train.steps, 1), "data.batch_size": (cfg.data.batch_size, 1),
        "data.seq_len": (cfg.data.seq_len, 1), "train.grad_accum": (cfg.train.grad_accum, 1),
        "data.eval_batch_size": (cfg.data.eval_batch_size, 1), "data.eval_buckets": (cfg.data.eval_buckets, 1),
        "train.eval_every": (cfg.train.eval_every, 1), "train.log_every": (cfg.train.log_every, 1),
        "train.patience": (cfg.train.patience, 0), "data.max_eval_batches": (cfg.data.max_eval_batches, 0),
        "model.num_labels": (cfg.model.num_labels, 0), "model.lora_rank": (cfg.model.lora_rank, 0),
        "optim.warmup_steps": (cfg.optim.warmup_steps, 0),
        "checkpoint.every": (cfg.checkpoint.every, 0), "checkpoint.max_to_keep": (cfg.checkpoint.max_to_keep, 1),
        "checkpoint.best_k": (cfg.checkpoint.best_k, 0), "distributed.num_processes": (cfg.distributed.num_processes, 0),
        "distributed.timeout_s": (cfg.distributed.timeout_s, 0),
    }
    if not cfg.model.pretrained:  # the sizes of a model built from scratch
        m = cfg.model
        at_least.update({"model.vocab_size": (m.vocab_size, 1), "model.d_model": (m.d_model, 1),
                         "model.n_layers": (m.n_layers, 1), "model.n_heads": (m.n_heads, 1),
                         "model.max_len": (m.max_len, 1), "model.d_ff": (m.d_ff, 0)})
    for key, (v, low) in at_least.items():
        if v < low:
            hint = {"train.eval_every": "; to evaluate only at the end, set it to train.steps",
                    "train.log_every": "; to log only at the end, set it to train.steps"}.get(key, "")
            raise ConfigError(f"{key}: must be {'positive' if low == 1 else '>= 0'}, got {v}{hint}")
    if cfg.data.batch_size % cfg.train.grad_accum:
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} is not divisible by train.grad_accum={cfg.train.grad_accum}")
    for axis in ("data", "fsdp", "tensor"):
        v = getattr(cfg.mesh, axis)
        if v == 0 or v < -1:
            raise ConfigError(f"mesh.{axis}: must be a positive size or -1, got {v}")
    o = cfg.optim
    numbers = {  # key: (value, low, high, low inclusive); every one must also be finite
        "optim.lr": (o.lr, 0.0, math.inf, False), "optim.weight_decay": (o.weight_decay, 0.0, math.inf, True),
        "optim.b1": (o.b1, 0.0, 1.0, True), "optim.b2": (o.b2, 0.0, 1.0, True),
        "optim.eps": (o.eps, 0.0, math.inf, True), "optim.end_lr_ratio": (o.end_lr_ratio, 0.0, math.inf, True),
        "optim.clip_norm": (o.clip_norm, 0.0, math.inf, True), "model.dropout": (cfg.model.dropout, 0.0, 1.0, True),
        "model.lora_alpha": (cfg.model.lora_alpha, 0.0, math.inf, False),
    }
    for key, (v, low, high, closed) in numbers.items():
        if not math.isfinite(v):
            raise ConfigError(f"{key}: must be a finite number, got {v}")
        if v < low or (v == low and not closed) or v >= high:
            bounds = f"{'[' if closed else '('}{low:g}, {high:g})"
            raise ConfigError(f"{key}: must lie in {bounds}, got {v}")
    m = cfg.model
    if not m.pretrained:
        if m.d_model % m.n_heads:
            raise ConfigError(f"model.d_model={m.d_model} is not divisible by model.n_heads={m.n_heads}")
        if cfg.data.seq_len > m.max_len:
            raise ConfigError(f"data.seq_len={cfg.data.seq_len} exceeds model.max_len={m.max_len} (the "
                              f"model's position table); lower data.seq_len or raise model.max_len")
    if cfg.data.kind == "tokens" and not cfg.data.prepared:
        raise ConfigError("data.prepared: data.kind=tokens reads a prepared directory (`scaling-jax prepare`); name it")
    if cfg.data.valid_documents < 0:
        raise ConfigError(f"data.valid_documents: must be 0 or more, got {cfg.data.valid_documents}")
    _validate_mup(cfg)
    _validate_sweep(cfg)
    if cfg.data.bpe_vocab and cfg.data.bpe_vocab != cfg.model.vocab_size and not cfg.model.pretrained:
        raise ConfigError(f"model.vocab_size: {cfg.model.vocab_size} must equal data.bpe_vocab={cfg.data.bpe_vocab} "
                          f"(the model's vocabulary is the trained tokenizer's)")


MUP_FAMILIES = ("gpt2",)  # model families whose modules take a muP parametrization


def _validate_mup(cfg: Config) -> None:
    m = cfg.model
    if m.parametrization != "mup":
        return
    if m.base_width <= 0:
        raise ConfigError("model.base_width: muP (model.parametrization=mup) needs the base width at which it "
                          "equals SP, e.g. model.base_width=64 (the width whose learning rate you tuned)")
    if m.family not in MUP_FAMILIES:
        raise ConfigError(f"model.parametrization: mup is implemented for model.family "
                          f"{', '.join(MUP_FAMILIES)}, not {m.family!r}")
    if m.pretrained:
        raise ConfigError("model.parametrization: mup trains from scratch; model.pretrained is set (a pretrained "
                          "checkpoint was trained under SP)")


def _validate_sweep(cfg: Config) -> None:
    s = cfg.sweep
    if len(s.lr_grid) == 1:
        raise ConfigError(f"sweep.lr_grid: a learning-rate sweep needs at least 2 values, got {list(s.lr_grid)} "
                          f"(for one learning rate set optim.lr and leave sweep.lr_grid empty)")
    for key, values in (("sweep.lr_grid", s.lr_grid), ("sweep.budgets", s.budgets)):
        bad = [v for v in values if not v > 0]
        if bad:
            raise ConfigError(f"{key}: values must be positive, got {bad[0]}")
        if len(set(values)) != len(values):
            raise ConfigError(f"{key}: values repeat: {list(values)}")
    if s.budgets and s.tokens:
        raise ConfigError("sweep.tokens: an IsoFLOP sweep (sweep.budgets) sets each run's tokens from its budget; "
                          "leave sweep.tokens at 0")
    if s.min_steps < 1 or s.max_tokens < 0:
        raise ConfigError(f"sweep.min_steps / sweep.max_tokens: need min_steps >= 1 and max_tokens >= 0, got "
                          f"{s.min_steps} / {s.max_tokens}")


_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


def expand_path(text: str, root: str | None = None) -> Path:
    """Expands ${VAR:-default} and ~; a relative path is taken under `root` when given."""
    out = _ENV.sub(lambda m: os.environ.get(m.group(1), m.group(2) or ""), text)
    p = Path(os.path.expanduser(out))
    if root is not None and not p.is_absolute():
        p = Path(root) / p
    return p


def to_dict(cfg: Any) -> dict:
    """A plain dict (lists for tuples) for YAML/JSON output."""
    def conv(x: Any) -> Any:
        if dataclasses.is_dataclass(x):
            return {f.name: conv(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (tuple, list)):
            return [conv(v) for v in x]
        if isinstance(x, dict):
            return {k: conv(v) for k, v in x.items()}
        return x
    return conv(cfg)


def config_text(cfg: Config) -> str:
    """The resolved config as YAML (what a run directory's config.yaml holds)."""
    return yaml.safe_dump(to_dict(cfg), sort_keys=False)


def dump_config(cfg: Config, path: str | os.PathLike) -> None:
    Path(path).write_text(config_text(cfg))
