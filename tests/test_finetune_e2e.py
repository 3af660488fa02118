"""Fine-tuning end to end on real WNUT-17 sentences with the real MiniLM-L6: seqeval metrics in
metrics.jsonl, LoRA merged on export (same logits as unmerged), predict, frozen layers bit-identical."""
import json
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling_jax.config import load_config
from scaling_jax.metrics_log import read_metrics

REPO = Path(__file__).resolve().parents[1]


def _head(src: Path, dst: Path, n: int) -> None:
    """The first n sentences of a CoNLL file (a small real subset for a fast test)."""
    blocks = src.read_text().split("\n\n")
    dst.write_text("\n\n".join(blocks[:n]) + "\n")


@pytest.fixture(scope="module")
def small_wnut(tmp_path_factory, shared_data):
    root = tmp_path_factory.mktemp("wnut")
    w = shared_data / "wnut17"
    _head(w / "wnut17train.conll", root / "train.conll", 160)
    _head(w / "emerging.dev.conll", root / "dev.conll", 64)
    _head(w / "emerging.test.annotated", root / "test.conll", 64)
    return root


def _cfg(run_dir, root, *extra):
    return load_config(REPO / "configs/ner.yaml", [
        f"run.dir={run_dir}", f"data.root={root}", "data.train=[train.conll]", "data.valid=[dev.conll]",
        "data.test=[test.conll]", "data.batch_size=16", "data.eval_batch_size=32", "train.steps=6",
        "train.eval_every=3", "checkpoint.every=3", "optim.warmup_steps=0", *extra])


@pytest.mark.slow
def test_lora_ner_run_scores_exports_merged_and_predicts(tmp_path, small_wnut):
    from scaling_jax.models import load_pretrained
    from scaling_jax.train.loop import train
    from scaling_jax.train.session import export_run, open_session, restore_params
    run = tmp_path / "run"
    cfg = _cfg(run, small_wnut, "model.lora_rank=8", "optim.lr=1e-3", "train.eval_test=true")
    result = train(cfg)
    summary = result["summary"]
    assert summary["params_trainable"] / summary["params_total"] < 0.02
    rows = read_metrics(run / "metrics.jsonl")
    evals = [r for r in rows if r["split"] == "eval"]
    assert evals and {"f1", "f1_strict", "precision", "recall", "f1/person"} <= set(evals[-1])
    tests = [r for r in rows if r["split"] == "test"]
    # train.eval_test: the test split scored at every eval too; the final score is the best
    # checkpoint's, restored, so it equals the live score logged at that step.
    assert [(t["phase"], t["step"]) for t in tests] == [("before", 0), ("during", 3), ("during", 6), ("after", 6)]
    during = {t["step"]: t for t in tests if t["phase"] == "during"}
    assert tests[-1]["from_step"] in during
    assert tests[-1]["f1"] == during[tests[-1]["from_step"]]["f1"]
    assert [r["time"] for r in rows] == sorted(r["time"] for r in rows)

    # The merged export computes what the unmerged LoRA model computes.
    out = tmp_path / "export"
    export_run(run, out)
    merged = load_pretrained(out, task="token_classification")
    session = open_session(cfg, with_data=False)
    _, trained = restore_params(session)
    ids = jnp.asarray(np.random.default_rng(0).integers(1000, 5000, (2, 12)), jnp.int32)
    mask = jnp.ones_like(ids)
    unmerged = session.model.apply(session.model_params(trained), ids, mask)
    np.testing.assert_allclose(np.asarray(merged.apply(merged.params, ids, mask)), np.asarray(unmerged),
                               atol=1e-4, rtol=0)
    assert [merged.id2label[i] for i in sorted(merged.id2label)] == session.label_names

    # transformers' PyTorch class loads the export with no missing weights.
    import torch
    import transformers
    hf, info = transformers.BertForTokenClassification.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    with torch.no_grad():
        ref = hf.eval()(input_ids=torch.tensor(np.asarray(ids)), attention_mask=torch.tensor(np.asarray(mask))).logits
    np.testing.assert_allclose(ref.numpy(), np.asarray(unmerged), atol=1e-4, rtol=0)

    # predict: JSON lines of entities (span, type, score) from the run directory.
    proc = subprocess.run([sys.executable, "-m", "scaling_jax.cli", "predict", str(run),
                           "--text", "Barack Obama visited Paris with Microsoft"],
                          capture_output=True, text=True, timeout=600,
                          env={**__import__("os").environ, "XLA_FLAGS": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    assert row["text"].startswith("Barack") and isinstance(row["entities"], list)
    for e in row["entities"]:
        assert row["text"][e["start"]:e["end"]] == e["text"] and 0 <= e["score"] <= 1


@pytest.mark.slow
def test_frozen_bottom_layers_stay_bit_identical_and_hold_no_adam_state(tmp_path, small_wnut):
    from scaling_jax.models import load_pretrained
    from scaling_jax.train.loop import train
    from scaling_jax.train.session import open_session, restore_params
    cfg = _cfg(tmp_path / "run", small_wnut, "optim.freeze=[bottom:3]", "train.early_stopping_metric=")
    result = train(cfg)
    session = open_session(cfg, with_data=False)
    _, trained = restore_params(session, "latest")
    before = load_pretrained(session.model.source_dir, task="base").params
    for name in ("embeddings", "encoder"):
        for (path, a) in jax.tree_util.tree_leaves_with_path(before[name]):
            key = jax.tree_util.keystr(path)
            b = trained[name]
            for k in path:
                b = b[k.key]
            same = np.array_equal(np.asarray(a), np.asarray(b))
            frozen = name == "embeddings" or any(f"'layer_{i}'" in key for i in range(3))
            assert same == frozen, f"{name}{key}: frozen={frozen} but unchanged={same}"
    s = result["summary"]
    frozen_share = 1 - s["params_trainable"] / s["params_total"]
    # Adam keeps mu and nu (float32) for trainable leaves only: bytes = 8 * trainable + small counts.
    assert abs(s["opt_state_bytes"] - 8 * s["params_trainable"]) < 1024
    assert frozen_share > 0.5


@pytest.mark.slow
def test_sequence_classification_fine_tune_learns_a_separable_task(tmp_path):
    from scaling_jax.train.loop import train
    rng = np.random.default_rng(0)
    good, bad = ["great", "wonderful", "superb", "lovely"], ["awful", "terrible", "dreadful", "boring"]
    def rows(n):
        out = []
        for _ in range(n):
            label = rng.integers(2)
            words = rng.choice(good if label else bad, 3)
            out.append(json.dumps({"text": f"the film was {' and '.join(words)}", "label": ["neg", "pos"][label]}))
        return "\n".join(out) + "\n"
    for split, n in (("train", 96), ("valid", 32), ("test", 32)):
        (tmp_path / f"{split}.jsonl").write_text(rows(n))
    cfg = load_config(REPO / "configs/cls.yaml", [f"run.dir={tmp_path / 'run'}", f"data.root={tmp_path}",
                                                  "train.steps=12", "train.eval_every=6", "checkpoint.every=6",
                                                  "optim.lr=1e-4", "optim.warmup_steps=0", "data.seq_len=16",
                                                  "data.batch_size=16", "data.eval_batch_size=32"])
    result = train(cfg)
    assert result["test"]["accuracy"] >= 0.9, result["test"]
