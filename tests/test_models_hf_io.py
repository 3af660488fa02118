"""HF directory import/export: byte-identical round trips, prefixes and heads, labels, clear errors,
atomic writes, from-scratch export, logical axis names."""
import json
import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import torch
import transformers
from safetensors import safe_open
from safetensors.numpy import load_file, save_file

from scaling_jax.models import (BertConfig, CheckpointError, GPT2Config, init_model, load_pretrained,
                                load_tokenizer, save_pretrained)
from scaling_jax.errors import OutputExistsError
from scaling_jax.models import hf
from scaling_jax.tree import path_str

VOCAB = 61
LABELS = {0: "O", 1: "B-PER", 2: "I-PER"}
CASES = [  # (HF class, our task)
    ("BertModel", "base"), ("BertForTokenClassification", "token_classification"),
    ("BertForSequenceClassification", "sequence_classification"), ("BertForMaskedLM", "masked_lm"),
    ("GPT2Model", "base"), ("GPT2LMHeadModel", "causal_lm"),
    ("GPT2ForSequenceClassification", "sequence_classification"),
]
LOGICAL_NAMES = {"batch", "length", "vocab", "embed", "heads", "kv", "mlp", "norm", "classes", "layers", None}


def hf_config(cls_name, **kw):
    if cls_name.startswith("Bert"):
        return transformers.BertConfig(vocab_size=VOCAB, hidden_size=16, num_attention_heads=2, num_hidden_layers=1,
                                       intermediate_size=20, max_position_embeddings=24, id2label=LABELS, **kw)
    return transformers.GPT2Config(vocab_size=VOCAB, n_embd=16, n_head=2, n_layer=1, n_positions=24, pad_token_id=0,
                                   bos_token_id=1, eos_token_id=1, id2label=LABELS, **kw)


def save_hf(cls_name, out: Path, seed=0, **kw) -> Path:
    torch.manual_seed(seed)
    model = getattr(transformers, cls_name)(hf_config(cls_name, **kw))
    with torch.no_grad():  # no ones/zeros left, so any swapped key or layout shows
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model.save_pretrained(out)
    return out


def hf_logits(model, ids, mask):
    with torch.no_grad():
        out = model(torch.tensor(ids, dtype=torch.long), attention_mask=torch.tensor(mask, dtype=torch.long))
    return (out.last_hidden_state if hasattr(out, "last_hidden_state") else out.logits).numpy()


def batch():
    ids = np.array([[5, 9, 14, 3, 7], [8, 2, 4, 0, 0]], np.int32)
    return ids, (ids != 0).astype(np.int32)


def tensors(path: Path) -> dict[str, np.ndarray]:
    return load_file(str(path / "model.safetensors"))


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


# ------------------------------------------------------------------------------------------ configs

def test_configs_read_hf_dicts_and_are_hashable():
    d = transformers.BertConfig(hidden_size=64, num_attention_heads=4, hidden_act="gelu_new").to_dict()
    cfg = BertConfig.from_hf_dict(d)  # ignores the many unrelated keys (id2label, torch settings, ...)
    assert (cfg.hidden_size, cfg.num_attention_heads, cfg.hidden_act) == (64, 4, "gelu_new")
    assert BertConfig.from_hf_dict(cfg.to_hf_dict()) == cfg and cfg.to_hf_dict()["model_type"] == "bert"
    g = GPT2Config.from_hf_dict({**transformers.GPT2Config(n_embd=32, n_head=4).to_dict(), "eos_token_id": [1, 2]})
    assert g.eos_token_id == (1, 2) and g.to_hf_dict()["eos_token_id"] == [1, 2]
    assert len({cfg, g, BertConfig.from_hf_dict(d)}) == 2  # hashable: usable as Linen module attributes
    with pytest.raises(ValueError, match="unknown model_type 'roberta'"):
        hf.config_from_hf_dict({"model_type": "roberta"})
    with pytest.raises(ValueError, match="model_type 'gpt2' is not 'bert'"):
        BertConfig.from_hf_dict({"model_type": "gpt2"})
    with pytest.raises(ValueError, match="not divisible by 5 attention heads"):
        BertConfig(hidden_size=64, num_attention_heads=5)
    with pytest.raises(ValueError, match="activation 'gelu_fancy' is not supported"):
        GPT2Config(activation_function="gelu_fancy")


# ------------------------------------------------------------------------------------------ round trip

@pytest.mark.parametrize("cls_name,task", CASES)
def test_round_trip_keeps_every_tensor_byte_for_byte(cls_name, task, tmp_path):
    src = save_hf(cls_name, tmp_path / "src")
    ours = load_pretrained(src, task=task)
    assert ours.newly_initialized == [] and ours.unused == []
    out = save_pretrained(ours, ours.params, tmp_path / "out")

    before, after = tensors(src), tensors(out)
    assert sorted(after) == sorted(before)  # tied weights are left out exactly as transformers leaves them
    for key, x in before.items():
        assert after[key].dtype == x.dtype and after[key].shape == x.shape, key
        assert after[key].tobytes() == x.tobytes(), f"{key} changed"
    with safe_open(str(out / "model.safetensors"), "np") as f:
        assert f.metadata() == {"format": "pt"}

    cls = getattr(transformers, cls_name)
    reloaded, info = cls.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"], info
    original = cls.from_pretrained(src).eval()
    ids, mask = batch()
    np.testing.assert_array_equal(hf_logits(reloaded.eval(), ids, mask), hf_logits(original, ids, mask))

    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [cls_name]
    if "Classification" in cls_name:
        assert reloaded.config.id2label == LABELS and ours.id2label == LABELS and ours.num_labels == 3
        assert config["label2id"] == {v: k for k, v in LABELS.items()} and config["num_labels"] == 3


def test_pytorch_bin_checkpoints_load_like_safetensors(tmp_path):
    src = save_hf("BertForTokenClassification", tmp_path / "src")
    state = {k: torch.from_numpy(v.copy()) for k, v in tensors(src).items()}
    (tmp_path / "bin").mkdir()
    torch.save(state, tmp_path / "bin" / "pytorch_model.bin")
    (tmp_path / "bin" / "config.json").write_text((src / "config.json").read_text())
    a = load_pretrained(src, task="token_classification")
    b = load_pretrained(tmp_path / "bin", task="token_classification")
    for x, y in zip(jax.tree.leaves(a.params), jax.tree.leaves(b.params)):
        np.testing.assert_array_equal(x, y)


# ------------------------------------------------------------------------------------------ heads, prefixes, labels

def test_bare_base_checkpoint_gets_a_new_head_and_reports_leftovers(tmp_path):
    src = save_hf("BertModel", tmp_path / "bare")  # keys without the "bert." prefix, with a pooler
    ours = load_pretrained(src, task="token_classification", num_labels=4, seed=1)
    assert ours.newly_initialized == ["classifier/bias", "classifier/kernel"]
    assert ours.unused == ["pooler.dense.bias", "pooler.dense.weight"]
    assert ours.num_labels == 4 and ours.id2label == {i: f"LABEL_{i}" for i in range(4)}
    np.testing.assert_array_equal(ours.params["embeddings"]["word_embeddings"]["embedding"],
                                  tensors(src)["embeddings.word_embeddings.weight"])
    head = ours.params["classifier"]["kernel"]
    assert head.shape == (16, 4) and float(jnp.abs(head).max()) > 0
    out = save_pretrained(ours, ours.params, tmp_path / "out")  # and transformers takes the new head as is
    model, info = transformers.BertForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    np.testing.assert_array_equal(model.classifier.weight.detach().numpy().T, ours.params["classifier"]["kernel"])

    mlm = save_hf("BertForMaskedLM", tmp_path / "mlm")
    base = load_pretrained(mlm, task="base")
    assert base.newly_initialized == ["pooler/dense/bias", "pooler/dense/kernel"]
    assert base.unused == sorted(k for k in tensors(mlm) if k.startswith("cls."))

    lm = save_hf("GPT2LMHeadModel", tmp_path / "lm")
    cls = load_pretrained(lm, task="sequence_classification", num_labels=2)
    assert cls.newly_initialized == ["score/kernel"] and cls.unused == []


def test_legacy_buffers_are_ignored(tmp_path):
    src = save_hf("GPT2LMHeadModel", tmp_path / "lm")
    t = tensors(src)
    t["transformer.h.0.attn.bias"] = np.tril(np.ones((1, 1, 24, 24), np.float32))  # pre-v4.x causal buffers
    t["transformer.h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(t, str(src / "model.safetensors"), metadata={"format": "pt"})
    assert load_pretrained(src, task="causal_lm").unused == []


def test_label_count_comes_from_the_head_and_must_agree(tmp_path):
    src = save_hf("BertForTokenClassification", tmp_path / "src")
    assert load_pretrained(src, task="token_classification").num_labels == 3
    named = load_pretrained(src, task="token_classification", id2label={0: "A", 1: "B", 2: "C"})
    assert named.id2label == {0: "A", 1: "B", 2: "C"}
    with pytest.raises(ValueError, match="task 'masked_lm' takes no num_labels"):
        load_pretrained(src, task="masked_lm", num_labels=3)
    with pytest.raises(ValueError, match="task 'causal_lm' is not one of bert's tasks"):
        load_pretrained(src, task="causal_lm")


# ------------------------------------------------------------------------------------------ bad input

def test_bad_directories_fail_clearly_and_write_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="model directory not found"):
        load_pretrained(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match=r"config\.json: not found"):
        load_pretrained(empty)
    src = save_hf("BertForTokenClassification", tmp_path / "src")
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    (no_weights / "config.json").write_text((src / "config.json").read_text())
    with pytest.raises(FileNotFoundError, match=r"no_weights: no weights \(looked for model\.safetensors"):
        load_pretrained(no_weights)
    (no_weights / "config.json").write_text(json.dumps({"model_type": "roberta"}))
    with pytest.raises(ValueError, match=r"no_weights/config\.json: unknown model_type 'roberta'"):
        load_pretrained(no_weights)
    assert listing(tmp_path / "no_weights") == ["config.json"]


def test_truncated_safetensors_is_a_clear_error(tmp_path):
    src = save_hf("BertForTokenClassification", tmp_path / "src")
    data = (src / "model.safetensors").read_bytes()
    (src / "model.safetensors").write_bytes(data[: len(data) // 2])
    before = listing(tmp_path)
    with pytest.raises(CheckpointError, match=r"src/model\.safetensors: truncated or corrupt safetensors"):
        load_pretrained(src, task="token_classification")
    (src / "model.safetensors").write_bytes(data[:6])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_pretrained(src, task="token_classification")
    assert listing(tmp_path) == before


def test_num_labels_contradicting_the_head_is_an_error(tmp_path):
    src = save_hf("BertForSequenceClassification", tmp_path / "src")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: num_labels=5 contradicts the checkpoint's "
                                              r"head 'classifier\.weight' of shape \(3, 16\)"):
        load_pretrained(src, task="sequence_classification", num_labels=5)
    gpt = save_hf("GPT2ForSequenceClassification", tmp_path / "gpt")
    with pytest.raises(CheckpointError, match="num_labels=2 contradicts the checkpoint's head 'score.weight'"):
        load_pretrained(gpt, task="sequence_classification", id2label={0: "neg", 1: "pos"})


def test_shape_mismatch_and_missing_keys_name_the_key(tmp_path):
    src = save_hf("BertForTokenClassification", tmp_path / "src")
    cfg = json.loads((src / "config.json").read_text())
    (src / "config.json").write_text(json.dumps({**cfg, "intermediate_size": 24}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: key 'bert\.encoder\.layer\.0\.intermediate\."
                                              r"dense\.bias' has shape \(20,\), but config\.json's model expects "
                                              r"\(24,\)"):
        load_pretrained(src, task="token_classification")
    (src / "config.json").write_text(json.dumps(cfg))
    t = tensors(src)
    del t["bert.encoder.layer.0.output.LayerNorm.weight"]
    save_file(t, str(src / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(CheckpointError, match=r"missing key 'bert\.encoder\.layer\.0\.output\.LayerNorm\.weight' "
                                              r"\(for encoder/layer_0/output/LayerNorm/scale\)"):
        load_pretrained(src, task="token_classification")


def test_failed_saves_leave_nothing_behind(tmp_path, monkeypatch):
    src = save_hf("BertForTokenClassification", tmp_path / "src")
    ours = load_pretrained(src, task="token_classification")
    root = tmp_path / "runs"
    root.mkdir()
    bad = jax.tree.map(lambda x: x, ours.params)
    del bad["classifier"]
    with pytest.raises(ValueError, match=r"params do not match .* missing \['classifier/bias'"):
        save_pretrained(ours, bad, root / "a")
    assert listing(root) == []

    import safetensors.numpy

    def half_write(tensors, path, metadata=None):
        Path(path).write_bytes(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(safetensors.numpy, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(ours, ours.params, root / "a")
    assert listing(root) == []
    monkeypatch.undo()

    good = save_pretrained(ours, ours.params, root / "a")
    before = {p: (good / p).read_bytes() for p in listing(good)}
    monkeypatch.setattr(safetensors.numpy, "save_file", half_write)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(ours, ours.params, good)  # an existing model dir survives a failed overwrite
    assert {p: (good / p).read_bytes() for p in listing(good)} == before
    assert listing(root) == sorted(["a", *(f"a/{p}" for p in before)])  # no temp dirs left either
    monkeypatch.undo()
    (root / "notes").mkdir()
    (root / "notes" / "todo.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="is not a model directory that export wrote"):
        save_pretrained(ours, ours.params, root / "notes")
    assert (root / "notes" / "todo.txt").read_text() == "mine"


def test_export_replaces_only_what_it_wrote_and_makes_a_normal_directory(tmp_path):
    src = save_hf("BertForTokenClassification", tmp_path / "src")
    ours = load_pretrained(src, task="token_classification")
    # Someone else's model directory: a config.json, other files and a subfolder. Before, export
    # took "has config.json" as "a model directory" and deleted all of it.
    foreign = tmp_path / "theirs"
    (foreign / "sub").mkdir(parents=True)
    (foreign / "config.json").write_text('{"model_type": "bert"}')
    (foreign / "notes.md").write_text("keep me")
    (foreign / "sub" / "data.bin").write_bytes(b"\x00\x01")
    before = {p: (foreign / p).read_bytes() for p in listing(foreign) if (foreign / p).is_file()}
    with pytest.raises(OutputExistsError, match="not a model directory that export wrote"):
        save_pretrained(ours, ours.params, foreign)
    assert {p: (foreign / p).read_bytes() for p in listing(foreign) if (foreign / p).is_file()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["src", "theirs"]  # no temporary directory left

    out = save_pretrained(ours, ours.params, tmp_path / "out")
    assert (out.stat().st_mode & 0o777) == 0o777 & ~_current_umask()  # not mkdtemp's 0700
    again = save_pretrained(ours, ours.params, out)  # its own earlier export: replaced
    assert (again / "config.json").is_file()
    (out / "README.md").write_text("my notes")  # a file export did not write: refused now
    with pytest.raises(OutputExistsError, match=r"holds files that export did not write \(README\.md\)"):
        save_pretrained(ours, ours.params, out)
    assert (out / "README.md").read_text() == "my notes"


def _current_umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


# ------------------------------------------------------------------------------------------ from scratch, tokenizer

def test_models_from_scratch_export_to_transformers(tmp_path):
    config = GPT2Config(vocab_size=VOCAB, n_positions=24, n_embd=16, n_layer=2, n_head=2, pad_token_id=0,
                        bos_token_id=1, eos_token_id=1)
    ours = init_model(config, "causal_lm", seed=3)
    assert ours.source_dir is None and "wte/embedding" in ours.newly_initialized
    out = save_pretrained(ours, ours.params, tmp_path / "gpt")
    model, info = transformers.GPT2LMHeadModel.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    ids, mask = batch()
    got = np.asarray(jax.jit(ours.apply)(ours.params, ids, mask))
    assert np.abs(got - hf_logits(model.eval(), ids, mask))[mask.astype(bool)].max() <= 1e-4

    bert = init_model(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=20, max_position_embeddings=24), "token_classification",
                      id2label=LABELS)
    out = save_pretrained(bert, bert.params, tmp_path / "bert")
    model, info = transformers.BertForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and model.config.id2label == LABELS
    with pytest.raises(ValueError, match="needs num_labels"):
        init_model(bert.config, "sequence_classification")


def test_tokenizer_files_travel_with_the_model(tmp_path):
    tok_dir = tmp_path / "tok"
    tok_dir.mkdir()
    (tok_dir / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "hello", "world"]))
    transformers.BertTokenizer(str(tok_dir / "vocab.txt")).save_pretrained(tok_dir)
    src = save_hf("BertModel", tmp_path / "src")
    ours = load_pretrained(src)
    out = save_pretrained(ours, ours.params, tmp_path / "out", tokenizer_dir=tok_dir)
    assert (out / "vocab.txt").read_bytes() == (tok_dir / "vocab.txt").read_bytes()
    assert load_tokenizer(out)("hello world")["input_ids"] == [2, 5, 6, 3]
    again = save_pretrained(load_pretrained(out), ours.params, tmp_path / "again")  # default: the source dir's
    assert (again / "vocab.txt").is_file() and (again / "tokenizer_config.json").is_file()


# ------------------------------------------------------------------------------------------ logical axes

def abstract_model(config, task, num_labels=None):
    """A `Pretrained` whose params are shapes only (init under eval_shape: nothing compiled or allocated)."""
    module = hf.family_of(config).module_cls(config, task=task, num_labels=num_labels)
    params = jax.eval_shape(lambda: init_model(config, task, num_labels=num_labels).params)
    return hf.Pretrained(config, task, num_labels, None, module, params)


def test_every_param_has_contract_logical_axes():
    bert = abstract_model(BertConfig(vocab_size=VOCAB, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=20, max_position_embeddings=24), "masked_lm")
    gpt = abstract_model(GPT2Config(vocab_size=VOCAB, n_positions=24, n_embd=16, n_layer=2, n_head=2),
                         "sequence_classification", num_labels=3)
    golden = {
        "embeddings/word_embeddings/embedding": P("vocab", "embed"),
        "embeddings/position_embeddings/embedding": P(None, "embed"),
        "embeddings/LayerNorm/scale": P("norm"),
        "encoder/layer_1/attention/self/query/kernel": P("embed", "heads"),
        "encoder/layer_1/attention/self/value/bias": P("heads"),
        "encoder/layer_1/attention/output/dense/kernel": P("heads", "embed"),
        "encoder/layer_1/intermediate/dense/kernel": P("embed", "mlp"),
        "encoder/layer_1/output/dense/kernel": P("mlp", "embed"),
        "cls/predictions/transform/dense/kernel": P("embed", None),
        "cls/predictions/bias": P("vocab"),
        "wte/embedding": P("vocab", "embed"),
        "wpe/embedding": P(None, "embed"),
        "h_0/attn/key/kernel": P("embed", "heads"),
        "h_0/attn/c_proj/kernel": P("heads", "embed"),
        "h_0/mlp/c_fc/kernel": P("embed", "mlp"),
        "h_0/mlp/c_proj/kernel": P("mlp", "embed"),
        "ln_f/bias": P("norm"),
        "score/kernel": P("embed", "classes"),
    }
    seen = {}
    for model in (bert, gpt):
        axes = model.logical_axes()
        assert jax.tree.structure(axes, is_leaf=lambda x: isinstance(x, P)) == jax.tree.structure(model.params)
        flat_axes = {path_str(p): s for p, s in
                     jax.tree_util.tree_flatten_with_path(axes, is_leaf=lambda x: isinstance(x, P))[0]}
        for path, x in hf._flat(model.params).items():
            spec = flat_axes[path]
            assert isinstance(spec, P) and len(spec) == x.ndim and set(spec) <= LOGICAL_NAMES, (path, spec)
            assert x.dtype == jnp.float32 and type(x) is jax.ShapeDtypeStruct  # plain arrays, no boxes
        seen.update(flat_axes)
    for path, spec in golden.items():
        assert seen[path] == spec, path
