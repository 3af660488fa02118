"""Hugging Face directories (config.json + safetensors) <-> our Flax models: load, save, init from scratch.

*Which key maps to which* is a table per family (`BERT_KEYS`, `GPT2_KEYS`: our module path regex ->
HF module name + `Layout`); *how a tensor changes* is the `Layout` (transpose a torch Linear weight,
slice GPT-2's fused `c_attn` into q/k/v). Loading and saving both walk the same table.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from scaling_jax.flops import train_flops_per_token
from scaling_jax.errors import CheckpointError, ConfigError, MissingFileError, OutputExistsError
from scaling_jax.models import bert, gpt2, llama
from scaling_jax.models.fetch import KNOWN_MODELS, fetch_model
from scaling_jax.models.parametrization import Parametrization, fold_into_standard
from scaling_jax.tree import flat_dict as _flat, unflat_dict as _unflat

log = logging.getLogger(__name__)

CLASSIFY_TASKS = ("token_classification", "sequence_classification")
# Batch keys of packed rows -> the models' keyword arguments (shape-suffixed).
PACKED_INPUTS = {"positions": "positions_BxL", "segment_ids": "segment_ids_BxL",
                 "segment_starts": "segment_starts_BxS", "segment_ends": "segment_ends_BxS"}
LM_TASKS = ("masked_lm", "causal_lm")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
                   "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model")


# ---------------------------------------------------------------- tensor layouts (the transforms)

@dataclass(frozen=True)
class Layout:
    """How one module's params sit in the HF state dict.

    `leaves` renames our leaf to HF's (`kernel` -> `weight`, LayerNorm `scale` -> `weight`).
    `transpose`: torch Linear stores (out, in); our kernels are (in, out). GPT-2's Conv1D is
    already (in, out). `part`/`parts`: our tensor is slice `part` of `parts` equal slices of the
    HF tensor's last axis (GPT-2 `c_attn` = [q | k | v]).
    """

    leaves: tuple[tuple[str, str], ...]
    transpose: bool = False
    part: int = 0
    parts: int = 1

    def hf_leaf(self, leaf: str) -> str:
        return dict(self.leaves)[leaf]

    def hf_shape(self, leaf: str, shape: tuple[int, ...]) -> tuple[int, ...]:
        shape = (*shape[:-1], shape[-1] * self.parts) if shape else shape
        return tuple(reversed(shape)) if self.transpose and leaf == "kernel" else tuple(shape)

    def to_ours(self, leaf: str, x: np.ndarray) -> np.ndarray:
        if self.transpose and leaf == "kernel":
            x = x.T
        if self.parts > 1:
            n = x.shape[-1] // self.parts
            x = x[..., self.part * n:(self.part + 1) * n]
        return np.ascontiguousarray(x, dtype=np.float32)

    def to_hf(self, leaf: str, x: np.ndarray) -> np.ndarray:
        """Our tensor in HF layout; the `parts` slices of one HF key are concatenated by the caller."""
        return x.T if self.transpose and leaf == "kernel" else x


LINEAR = Layout((("kernel", "weight"), ("bias", "bias")), transpose=True)
CONV1D = Layout((("kernel", "weight"), ("bias", "bias")))
NORM = Layout((("scale", "weight"), ("bias", "bias")))
EMBED = Layout((("embedding", "weight"),))
BIAS = Layout((("bias", "bias"),))
QKV = tuple(dataclasses.replace(CONV1D, part=i, parts=3) for i in range(3))

# ---------------------------------------------------------------- key tables (the mapping)
# (our module path regex, HF module name with {0}, {1} = regex groups, layout). HF names are those of
# the task models (BertFor*, GPT2LMHeadModel, ...): the base model under its prefix, heads at the top.

BERT_KEYS = (
    (r"embeddings/(word|position|token_type)_embeddings", "bert.embeddings.{0}_embeddings", EMBED),
    (r"embeddings/LayerNorm", "bert.embeddings.LayerNorm", NORM),
    (r"encoder/layer_(\d+)/attention/self/(query|key|value)", "bert.encoder.layer.{0}.attention.self.{1}", LINEAR),
    (r"encoder/layer_(\d+)/attention/output/dense", "bert.encoder.layer.{0}.attention.output.dense", LINEAR),
    (r"encoder/layer_(\d+)/attention/output/LayerNorm", "bert.encoder.layer.{0}.attention.output.LayerNorm", NORM),
    (r"encoder/layer_(\d+)/intermediate/dense", "bert.encoder.layer.{0}.intermediate.dense", LINEAR),
    (r"encoder/layer_(\d+)/output/dense", "bert.encoder.layer.{0}.output.dense", LINEAR),
    (r"encoder/layer_(\d+)/output/LayerNorm", "bert.encoder.layer.{0}.output.LayerNorm", NORM),
    (r"pooler/dense", "bert.pooler.dense", LINEAR),
    (r"classifier", "classifier", LINEAR),
    (r"cls/predictions/transform/dense", "cls.predictions.transform.dense", LINEAR),
    (r"cls/predictions/transform/LayerNorm", "cls.predictions.transform.LayerNorm", NORM),
    (r"cls/predictions", "cls.predictions", BIAS),
)

GPT2_KEYS = (
    (r"(wte|wpe)", "transformer.{0}", EMBED),
    (r"h_(\d+)/(ln_1|ln_2)", "transformer.h.{0}.{1}", NORM),
    (r"h_(\d+)/attn/query", "transformer.h.{0}.attn.c_attn", QKV[0]),
    (r"h_(\d+)/attn/key", "transformer.h.{0}.attn.c_attn", QKV[1]),
    (r"h_(\d+)/attn/value", "transformer.h.{0}.attn.c_attn", QKV[2]),
    (r"h_(\d+)/(attn|mlp)/(c_proj|c_fc)", "transformer.h.{0}.{1}.{2}", CONV1D),
    (r"ln_f", "transformer.ln_f", NORM),
    (r"score", "score", LINEAR),
)

LLAMA_KEYS = (  # LlamaForCausalLM / Qwen2ForCausalLM / MistralForCausalLM (and their *Model, *ForSequenceClassification)
    (r"embed_tokens", "model.embed_tokens", EMBED),
    (r"layers_(\d+)/(input_layernorm|post_attention_layernorm)", "model.layers.{0}.{1}", NORM),
    (r"layers_(\d+)/self_attn/(q_proj|k_proj|v_proj|o_proj)", "model.layers.{0}.self_attn.{1}", LINEAR),
    (r"layers_(\d+)/mlp/(gate_proj|up_proj|down_proj)", "model.layers.{0}.mlp.{1}", LINEAR),
    (r"norm", "model.norm", NORM),
    (r"lm_head", "lm_head", LINEAR),
    (r"score", "score", LINEAR),
)


@dataclass(frozen=True)
class Family:
    model_type: str
    config_cls: type
    module_cls: type
    tasks: tuple[str, ...]
    prefix: str  # base_model_prefix + "."; HF's bare BertModel / GPT2Model save without it
    keys: tuple
    architectures: dict[str, str]
    head_key: str  # HF key whose first dim is num_labels
    tied: tuple[str, ...]  # HF keys tied to ours: read nothing from them, never written
    ignored: str  # regex of HF buffers that are not parameters (old checkpoints carry them)
    new_ok: tuple[str, ...]  # our top-level modules a checkpoint may lack (heads): freshly initialised
    untied_ok: bool = False  # an LM head with its own weights (tie_word_embeddings=false) is supported

    def hf_key(self, path: str) -> tuple[str, Layout]:
        module, leaf = path.rsplit("/", 1)
        for pattern, name, layout in self.keys:
            m = re.fullmatch(pattern, module)
            if m:
                return f"{name.format(*m.groups())}.{layout.hf_leaf(leaf)}", layout
        raise KeyError(f"no HF key for param {path!r} in the {self.model_type} key table")


BERT = Family(
    "bert", bert.BertConfig, bert.BertModel, bert.TASKS, "bert.", BERT_KEYS,
    {"base": "BertModel", "token_classification": "BertForTokenClassification",
     "sequence_classification": "BertForSequenceClassification", "masked_lm": "BertForMaskedLM"},
    head_key="classifier.weight",
    tied=("cls.predictions.decoder.weight", "cls.predictions.decoder.bias"),
    ignored=r"(.*\.)?embeddings\.(position_ids|token_type_ids)",
    new_ok=("pooler", "classifier", "cls"))
GPT2 = Family(
    "gpt2", gpt2.GPT2Config, gpt2.GPT2Model, gpt2.TASKS, "transformer.", GPT2_KEYS,
    {"base": "GPT2Model", "causal_lm": "GPT2LMHeadModel", "sequence_classification": "GPT2ForSequenceClassification"},
    head_key="score.weight",
    tied=("lm_head.weight",),
    ignored=r"(.*\.)?h\.\d+\.(attn|crossattention)\.(bias|masked_bias)",
    new_ok=("score",))


def _llama_family(model_type: str, name: str) -> Family:
    """Llama, Qwen2 and Mistral share our LlamaModel and key table; HF class names differ."""
    return Family(
        model_type, llama.LlamaConfig, llama.LlamaModel, llama.TASKS, "model.", LLAMA_KEYS,
        {"base": f"{name}Model", "causal_lm": f"{name}ForCausalLM",
         "sequence_classification": f"{name}ForSequenceClassification"},
        head_key="score.weight",
        tied=(),
        ignored=r"(.*\.)?rotary_emb\.inv_freq|lm_head\.weight",  # a tied head saved anyway is not read
        new_ok=("score",), untied_ok=True)


LLAMA, QWEN2, MISTRAL = (_llama_family(t, n) for t, n in (("llama", "Llama"), ("qwen2", "Qwen2"),
                                                           ("mistral", "Mistral")))
FAMILIES = {f.model_type: f for f in (BERT, GPT2, LLAMA, QWEN2, MISTRAL)}


def family_of(config_or_type: Any, source: str = "config") -> Family:
    key = config_or_type if isinstance(config_or_type, str) else getattr(config_or_type, "model_type", None)
    if key not in FAMILIES:
        raise ConfigError(f"{source}: unknown model_type {key!r}; supported: {', '.join(FAMILIES)}")
    return FAMILIES[key]


def config_from_hf_dict(d: dict, source: str = "config.json"):
    """BertConfig or GPT2Config from a config.json dict, chosen by its `model_type`."""
    family = family_of(d.get("model_type"), source)
    try:
        return family.config_cls.from_hf_dict(d)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{source}: {e}") from e


# ---------------------------------------------------------------- reading weights

class _Weights:
    """The tensors of a model directory: model.safetensors, its sharded index, or pytorch_model.bin
    (when torch is importable). Read lazily, one key at a time, as float32 numpy arrays."""

    def __init__(self, model_dir: Path):
        self.model_dir = model_dir
        self._handles: dict[Path, Any] = {}
        self._torch: dict | None = None
        self.files: dict[str, Path] = {}
        single, index, pt = (model_dir / "model.safetensors", model_dir / "model.safetensors.index.json",
                             model_dir / "pytorch_model.bin")
        if single.is_file():
            self._open_safetensors(single)
        elif index.is_file():
            try:
                shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            except (ValueError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: not a safetensors index ({e})") from e
            for shard in shards:
                self._open_safetensors(model_dir / shard)
        elif pt.is_file():
            try:
                import torch
            except ImportError:
                raise CheckpointError(f"{pt}: a PyTorch checkpoint needs torch installed; or convert it to "
                                      f"model.safetensors") from None
            try:
                self._torch = torch.load(pt, map_location="cpu", weights_only=True)
            except Exception as e:  # any unpickling failure is a corrupt file
                raise CheckpointError(f"{pt}: cannot read the PyTorch checkpoint ({type(e).__name__}: {e})") from e
            self.files = {k: pt for k in self._torch}
        else:
            raise MissingFileError(f"{model_dir}: no weights (looked for model.safetensors, "
                                    f"model.safetensors.index.json, pytorch_model.bin)")

    def _open_safetensors(self, path: Path) -> None:
        from safetensors import safe_open
        if not path.is_file():
            raise MissingFileError(f"{path}: safetensors shard not found")
        try:
            handle = safe_open(str(path), framework="np")
            keys = list(handle.keys())
        except Exception as e:  # SafetensorError, OSError: a truncated or corrupt file
            raise CheckpointError(f"{path}: truncated or corrupt safetensors file ({e})") from e
        self._handles[path] = handle
        self.files.update({k: path for k in keys})

    def find(self, key: str, prefix: str) -> str | None:
        """`key` as stored: with the base-model prefix, or without it (a bare BertModel/GPT2Model)."""
        if key in self.files:
            return key
        if key.startswith(prefix) and key[len(prefix):] in self.files:
            return key[len(prefix):]
        return None

    def shape(self, key: str) -> tuple[int, ...]:
        if self._torch is not None:
            return tuple(self._torch[key].shape)
        return tuple(self._handles[self.files[key]].get_slice(key).get_shape())

    def get(self, key: str) -> np.ndarray:
        path = self.files[key]
        try:
            if self._torch is not None:
                return self._torch[key].float().numpy()
            handle = self._handles[path]
            if handle.get_slice(key).get_dtype() == "BF16":  # numpy has no bfloat16: read through jax
                from safetensors import safe_open
                with safe_open(str(path), framework="flax") as f:
                    return np.asarray(f.get_tensor(key), dtype=np.float32)
            return np.asarray(handle.get_tensor(key), dtype=np.float32)
        except Exception as e:
            raise CheckpointError(f"{path}: cannot read tensor {key!r} ({type(e).__name__}: {e})") from e

    def close(self) -> None:
        for handle in self._handles.values():
            handle.__exit__(None, None, None)
        self._handles, self._torch = {}, None

    def __enter__(self) -> "_Weights":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def file_of(self, key: str | None = None) -> Path:
        if key is not None and key in self.files:
            return self.files[key]
        return next(iter(self.files.values()), self.model_dir)


# ---------------------------------------------------------------- the loaded model

@dataclass(eq=False)
class Pretrained:
    """A model with its params: `.apply(params, input_ids, ...) -> logits` is pure and jittable.

    `params` are plain float32 arrays (no Partitioned boxes). `newly_initialized` lists our param
    paths ("classifier/kernel") that the checkpoint did not provide; `unused` lists checkpoint keys
    the model did not read.
    """

    config: Any
    task: str
    num_labels: int | None
    id2label: dict[int, str] | None
    module: nn.Module
    params: Any
    source_dir: Path | None = None
    newly_initialized: list[str] = field(default_factory=list)
    unused: list[str] = field(default_factory=list)

    def apply(self, params, input_ids, attention_mask=None, token_type_ids=None, *, train: bool = False,
              rng: jax.Array | None = None, **packed: jax.Array) -> jax.Array:
        """Logits (float32): BxLxC / BxC / BxLxV by task, the last hidden state BxLxD for `base`.
        `rng` feeds dropout when `train` is true. `packed`: a packed batch's `positions`,
        `segment_ids`, `segment_starts`, `segment_ends` (data/packing.py; sequence-level logits
        are then B x S x C, one per segment)."""
        rngs = {"dropout": rng} if rng is not None else None
        unknown = set(packed) - set(PACKED_INPUTS)
        if unknown:
            raise TypeError(f"apply() got unexpected inputs {sorted(unknown)}; packed inputs: {', '.join(PACKED_INPUTS)}")
        return self.module.apply({"params": params}, input_ids, attention_mask, token_type_ids, train=train,
                                 rngs=rngs, **{PACKED_INPUTS[k]: v for k, v in packed.items()})

    def abstract_variables(self):
        """`jax.eval_shape` of init: ShapeDtypeStructs boxed with their logical axis names."""
        return jax.eval_shape(_init_fn(self.module), jax.random.PRNGKey(0))

    def logical_axes(self) -> Any:
        """A tree matching `params` whose leaves are PartitionSpecs of logical axis names."""
        return nn.get_partition_spec(self.abstract_variables())["params"]

    def matmul_params(self) -> int:
        """The weights each token is multiplied by: every 2-D dense kernel (an untied LM head is one),
        plus the LM head tied to the input embeddings (causal / masked LM), counted once."""
        shapes = _flat(nn.meta.unbox(self.abstract_variables())["params"])
        n = sum(math.prod(x.shape) for path, x in shapes.items() if path.endswith("/kernel") and len(x.shape) == 2)
        if self.task in LM_TASKS and getattr(self.config, "tie_word_embeddings", True):
            n += self.config.vocab_size * self.config.hidden_size
        return int(n)

    def flops_per_token(self, seq_len: int) -> int:
        """Training FLOPs per token at `seq_len` (`scaling_jax.flops.train_flops_per_token`)."""
        c = self.config
        return train_flops_per_token(self.matmul_params(), c.num_hidden_layers, int(seq_len),
                                     c.num_attention_heads * c.head_dim)


def _init_fn(module: nn.Module) -> Callable:
    ids = jnp.zeros((1, 2), jnp.int32)
    return lambda rng: module.init(rng, ids, jnp.ones_like(ids))


def _init_params(module: nn.Module, seed: int) -> Any:
    return nn.meta.unbox(jax.jit(_init_fn(module))(jax.random.PRNGKey(seed)))["params"]


def _check_task(family: Family, config, task: str, source: str) -> None:
    if task not in family.tasks:
        raise ConfigError(f"{source}: task {task!r} is not one of {family.model_type}'s tasks: "
                         f"{', '.join(family.tasks)}")
    if task in LM_TASKS and not config.tie_word_embeddings and not family.untied_ok:
        raise ConfigError(f"{source}: tie_word_embeddings=false (an untied LM head) is not supported")


def _resolve_labels(family: Family, task: str, num_labels: int | None, id2label: dict | None, hf: dict,
                    weights: _Weights | None, source: str) -> tuple[int | None, dict[int, str] | None]:
    if task not in CLASSIFY_TASKS:
        if num_labels or id2label:
            raise ConfigError(f"task {task!r} takes no num_labels/id2label (only {', '.join(CLASSIFY_TASKS)} do)")
        return None, None
    if id2label is not None:
        id2label = {int(k): str(v) for k, v in dict(id2label).items()}
        if num_labels is None:
            num_labels = len(id2label)
        elif num_labels != len(id2label):
            raise ConfigError(f"num_labels={num_labels} but id2label has {len(id2label)} labels")
    key = weights.find(family.head_key, family.prefix) if weights is not None else None
    if key is not None:
        shape = weights.shape(key)
        if num_labels is not None and num_labels != shape[0]:
            raise CheckpointError(
                f"{weights.file_of(key)}: num_labels={num_labels} contradicts the checkpoint's head {key!r} "
                f"of shape {shape} ({shape[0]} labels); pass num_labels={shape[0]} (or none), or start from "
                f"a checkpoint without this head")
        num_labels = shape[0]
    hf_labels = hf.get("id2label") or {}
    if num_labels is None:
        num_labels = len(hf_labels) or hf.get("num_labels")
        if not num_labels:
            raise ConfigError(f"{source}: task {task!r} needs num_labels (the checkpoint has no head and "
                             f"config.json no id2label)")
    if id2label is None:
        id2label = ({int(k): str(v) for k, v in hf_labels.items()} if len(hf_labels) == num_labels
                    else {i: f"LABEL_{i}" for i in range(num_labels)})
    return int(num_labels), id2label


def _import_params(family: Family, module: nn.Module, weights: _Weights, seed: int
                   ) -> tuple[dict, list[str], list[str]]:
    """(params, newly initialised paths, unused checkpoint keys)."""
    abstract = _flat(nn.meta.unbox(jax.eval_shape(_init_fn(module), jax.random.PRNGKey(0)))["params"])
    flat, missing, used = {}, [], set()
    for path, spec in abstract.items():
        hf_key, layout = family.hf_key(path)
        key = weights.find(hf_key, family.prefix)
        if key is None:
            if path.split("/")[0] not in family.new_ok:
                raise CheckpointError(f"{weights.file_of()}: missing key {hf_key!r} (for {path}); the checkpoint "
                                      f"does not fit this {family.model_type} config")
            missing.append(path)
            continue
        leaf = path.rsplit("/", 1)[1]
        want = layout.hf_shape(leaf, tuple(spec.shape))
        got = weights.shape(key)
        if got != want:
            raise CheckpointError(f"{weights.file_of(key)}: key {key!r} has shape {got}, but config.json's model "
                                  f"expects {want}")
        flat[path] = jnp.asarray(layout.to_ours(leaf, weights.get(key)))
        used.add(key)
    for tied in family.tied:
        key = weights.find(tied, family.prefix)
        if key is not None:
            used.add(key)
    if missing:  # jit only the missing leaves: XLA drops the rest of init (and the dummy forward)
        init_missing = lambda rng: {p: x for p, x in
                                    _flat(nn.meta.unbox(_init_fn(module)(rng))["params"]).items() if p in missing}
        flat.update(jax.jit(init_missing)(jax.random.PRNGKey(seed)))
    unused = sorted(k for k in weights.files if k not in used and not re.fullmatch(family.ignored, k))
    return _unflat(flat), sorted(missing), unused


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """A local model directory, or a known alias ("minilm-l6") fetched into the cache."""
    if isinstance(path, str) and path in KNOWN_MODELS:
        return fetch_model(path)
    model_dir = Path(path).expanduser()
    if not model_dir.is_dir():
        raise MissingFileError(f"{path}: model directory not found (known aliases: {', '.join(KNOWN_MODELS)})")
    return model_dir


def _read_config(model_dir: Path) -> dict:
    path = model_dir / "config.json"
    if not path.is_file():
        raise MissingFileError(f"{path}: not found; a Hugging Face model directory needs config.json")
    try:
        return json.loads(path.read_text())
    except ValueError as e:
        raise CheckpointError(f"{path}: not valid JSON ({e})") from e


def load_pretrained(path: str | os.PathLike, task: str = "base", num_labels: int | None = None,
                    id2label: dict | None = None, dtype: Any = jnp.float32, remat: bool | str = False,
                    seed: int = 0, scan_layers: bool = False, kernels: str = "auto") -> Pretrained:
    """Our model for `task`, with weights from a local HF directory (or alias such as "minilm-l6").

    Keys may carry the base-model prefix (`bert.`, `transformer.`) or not. A head the checkpoint
    lacks is initialised from `seed` (logged, and listed in `.newly_initialized`); checkpoint keys
    the task does not use are logged and listed in `.unused`. `num_labels` defaults to the
    checkpoint head's size; a different value is an error. `scan_layers` runs the layers under
    `lax.scan` (same params, same numbers; compile time flat in depth); `remat` (True, or a policy
    name from `models.layers.REMAT_POLICIES`) recomputes layer activations in the backward pass;
    `kernels` picks the ops backend (`auto`, `xla`, `xla_cpu`).
    """
    model_dir = resolve_model_dir(path)
    hf = _read_config(model_dir)
    source = str(model_dir / "config.json")
    config = config_from_hf_dict(hf, source)
    family = family_of(config, source)
    _check_task(family, config, task, source)
    with _Weights(model_dir) as weights:
        num_labels, id2label = _resolve_labels(family, task, num_labels, id2label, hf, weights, source)
        module = family.module_cls(config, task=task, num_labels=num_labels, dtype=dtype, kernels=kernels,
                                   remat=remat, scan=scan_layers)
        params, newly, unused = _import_params(family, module, weights, seed)
    if newly:
        log.info("%s: newly initialised (not in the checkpoint): %s", model_dir, ", ".join(newly))
    if unused:
        log.info("%s: unused checkpoint keys: %s", model_dir, ", ".join(unused))
    return Pretrained(config, task, num_labels, id2label, module, params, model_dir, newly, unused)


def init_model(config, task: str, num_labels: int | None = None, seed: int = 0, dtype: Any = jnp.float32,
               remat: bool | str = False, id2label: dict | None = None, scan_layers: bool = False,
               kernels: str = "auto", parametrization: Parametrization | None = None) -> Pretrained:
    """A model initialised from scratch (HF's init: N(0, initializer_range), zero biases; under a muP
    `parametrization` the hidden matrices' std shrinks with width: models/parametrization.py)."""
    family = family_of(config)
    _check_task(family, config, task, type(config).__name__)
    num_labels, id2label = _resolve_labels(family, task, num_labels, id2label, {}, None, type(config).__name__)
    extra = {} if parametrization is None else {"parametrization": parametrization}
    module = family.module_cls(config, task=task, num_labels=num_labels, dtype=dtype, kernels=kernels,
                               remat=remat, scan=scan_layers, **extra)
    params = _init_params(module, seed)
    return Pretrained(config, task, num_labels, id2label, module, params, None, sorted(_flat(params)), [])


# ---------------------------------------------------------------- saving

def export_tensors(model: Pretrained, params: Any) -> dict[str, np.ndarray]:
    """Params -> {HF key: contiguous float32 array in HF layout}, as `model.task`'s HF class names them.

    Tied weights (`cls.predictions.decoder.*`, `lm_head.weight`) are not written, as transformers
    does: it re-ties them on load. A muP model's params are first folded into the standard form
    (`parametrization.fold_into_standard`), so transformers computes the same logits.
    """
    family = family_of(model.config)
    params = _standard_params(model, params)
    expected = {p: tuple(s.shape) for p, s in _flat(nn.meta.unbox(model.abstract_variables())["params"]).items()}
    flat = {p: np.asarray(jax.device_get(x)) for p, x in _flat(nn.meta.unbox(params)).items()}
    if set(flat) != set(expected):
        extra, lacking = sorted(set(flat) - set(expected)), sorted(set(expected) - set(flat))
        raise ValueError(f"params do not match the {family.model_type} {model.task} model: "
                         f"unexpected {extra[:5]}, missing {lacking[:5]}")
    parts: dict[str, dict[int, np.ndarray]] = {}
    for path, x in flat.items():
        if x.shape != expected[path]:
            raise ValueError(f"param {path} has shape {x.shape}, the model expects {expected[path]}")
        hf_key, layout = family.hf_key(path)
        if model.task == "base" and hf_key.startswith(family.prefix):
            hf_key = hf_key[len(family.prefix):]  # bare BertModel / GPT2Model state dicts have no prefix
        parts.setdefault(hf_key, {})[layout.part] = layout.to_hf(path.rsplit("/", 1)[1], x)
    return {k: np.ascontiguousarray(np.concatenate([p[i] for i in sorted(p)], axis=-1) if len(p) > 1
                                    else p[0], dtype=np.float32)
            for k, p in parts.items()}


def _standard_params(model: Pretrained, params: Any) -> Any:
    p = getattr(model.module, "parametrization", None)
    if p is None or not p.is_mup:
        return params
    c = model.config
    return fold_into_standard(params, p, model_type=c.model_type, width=c.hidden_size, head_dim=c.head_dim,
                              scale_attn_weights=getattr(c, "scale_attn_weights", True),
                              output_head=model.task != "base")


def export_config(model: Pretrained) -> dict:
    """config.json: the source's extra keys kept, our architecture fields, task class and labels."""
    family = family_of(model.config)
    out: dict = {}
    if model.source_dir is not None and (Path(model.source_dir) / "config.json").is_file():
        out = json.loads((Path(model.source_dir) / "config.json").read_text())
        for k in ("_name_or_path", "transformers_version", "architectures", "id2label", "label2id", "num_labels",
                  "torch_dtype", "dtype"):
            out.pop(k, None)
    out.update(model.config.to_hf_dict())
    out["architectures"] = [family.architectures[model.task]]
    out["dtype"] = "float32"
    if model.task in CLASSIFY_TASKS:
        id2label = model.id2label or {i: f"LABEL_{i}" for i in range(model.num_labels)}
        out["num_labels"] = model.num_labels
        out["id2label"] = {str(i): id2label[i] for i in sorted(id2label)}
        out["label2id"] = {id2label[i]: i for i in sorted(id2label)}
    return dict(sorted(out.items()))


EXPORT_MARKER = ".scaling_jax_export.json"  # in every directory save_pretrained writes: what it wrote


def save_pretrained(model: Pretrained, params: Any, out_dir: str | os.PathLike,
                    tokenizer_dir: str | os.PathLike | None = None) -> Path:
    """Writes `out_dir` as a Hugging Face directory that transformers loads with no missing or
    unexpected keys: config.json, model.safetensors, and the tokenizer files of `tokenizer_dir`
    (default: the directory the model was loaded from) when present, plus `EXPORT_MARKER`, which
    lists those files.

    Atomic: everything is written into a temporary sibling directory that is then renamed over
    `out_dir`, so a failure leaves `out_dir` as it was. Never removes what it did not write: an
    existing `out_dir` is replaced only when it is empty or an earlier save_pretrained wrote it
    (its marker lists every file in it); anything else raises OutputExistsError. The directory
    gets the usual mode (0777 less the umask), not mkdtemp's private 0700.
    """
    from safetensors.numpy import save_file
    out = Path(out_dir).expanduser()
    _check_replaceable(out)
    tensors = export_tensors(model, params)
    config = export_config(model)
    tok_src = None
    if tokenizer_dir is not None:
        tok_src = resolve_model_dir(tokenizer_dir)
    elif model.source_dir is not None and Path(model.source_dir).is_dir():
        tok_src = Path(model.source_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        save_file(tensors, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        (tmp / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        copied = []
        for name in TOKENIZER_FILES if tok_src is not None else ():
            if (tok_src / name).is_file():
                shutil.copy2(tok_src / name, tmp / name)
                copied.append(name)
        (tmp / EXPORT_MARKER).write_text(json.dumps(
            {"written_by": "scaling_jax save_pretrained", "files": ["model.safetensors", "config.json", *copied]},
            indent=1) + "\n")
        if out.exists():
            _check_replaceable(out)  # again, just before the swap
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            os.rename(out, old / out.name)
            os.rename(tmp, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("saved %s (%d tensors%s)", out, len(tensors), f", tokenizer: {', '.join(copied)}" if copied else "")
    return out


def _check_replaceable(out: Path) -> None:
    """Raises OutputExistsError unless `out` is absent, empty, or holds only what an earlier
    save_pretrained wrote there (per its marker)."""
    if not out.exists() and not out.is_symlink():
        return
    if not out.is_dir() or out.is_symlink():
        raise OutputExistsError(f"{out}: exists and is not a directory; refusing to overwrite it")
    entries = sorted(p.name for p in out.iterdir())
    if not entries:
        return
    marker = out / EXPORT_MARKER
    if not marker.is_file():
        raise OutputExistsError(f"{out}: exists and is not a model directory that export wrote (it has no "
                                f"{EXPORT_MARKER}); refusing to overwrite it: remove it yourself or choose "
                                f"another directory")
    try:
        written = set(json.loads(marker.read_text())["files"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OutputExistsError(f"{marker}: unreadable ({e}); refusing to overwrite {out}") from None
    foreign = [name for name in entries if name not in written and name != EXPORT_MARKER]
    if foreign:
        raise OutputExistsError(f"{out}: holds files that export did not write ({', '.join(foreign[:5])}"
                                f"{', ...' if len(foreign) > 5 else ''}); refusing to overwrite it: move them "
                                f"or choose another directory")


def _umask() -> int:
    """The process's umask, read without changing it (Linux /proc), else by setting it back."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def load_tokenizer(path: str | os.PathLike):
    """The tokenizer of a local directory or alias; never a hub name.

    A directory with tokenizer.json is read as transformers' fast tokenizer straight from that
    file (same ids, tested against AutoTokenizer): AutoTokenizer first reads config.json through
    transformers' config classes, which import torch where it is installed (220 MB resident).
    """
    model_dir = resolve_model_dir(path)
    if (model_dir / "tokenizer.json").is_file():
        import transformers
        cls = transformers.PreTrainedTokenizerFast
        config_path = model_dir / "tokenizer_config.json"
        if config_path.is_file():  # its class sets model_input_names (BERT's adds token_type_ids)
            name = json.loads(config_path.read_text()).get("tokenizer_class") or ""
            for candidate in (name, name.removesuffix("Fast") + "Fast", name.removesuffix("Fast")):
                found = getattr(transformers, candidate, None) if candidate else None
                if isinstance(found, type) and issubclass(found, transformers.PreTrainedTokenizerBase):
                    cls = found
                    break
        return cls.from_pretrained(str(model_dir), local_files_only=True)
    from transformers import AutoTokenizer
    return AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)


__all__ = ["Pretrained", "CheckpointError", "load_pretrained", "init_model", "save_pretrained", "load_tokenizer",
           "EXPORT_MARKER",
           "config_from_hf_dict", "export_tensors", "export_config"]
