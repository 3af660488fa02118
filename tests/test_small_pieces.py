"""Small pieces with outside references: sampling rules, classification reader errors, sampler
determinism, LM windows, the bench harness's output contract."""
import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from scaling_jax.data.classification import read_examples
from scaling_jax.errors import DataError
from scaling_jax.data.sampler import batch_indices, process_slice
from scaling_jax.commands.predict import sample_token


def test_greedy_is_argmax_and_top_k_never_leaves_the_top_k():
    logits = jnp.asarray([0.1, 3.0, 2.0, -1.0, 2.5])
    assert int(sample_token(logits, jax.random.PRNGKey(0))) == 1
    draws = {int(sample_token(logits, jax.random.PRNGKey(i), top_k=2)) for i in range(200)}
    assert draws == {1, 4}


def test_top_p_keeps_the_smallest_set_reaching_p():
    probs = np.array([0.5, 0.3, 0.15, 0.05])
    logits = jnp.log(jnp.asarray(probs))
    draws = [int(sample_token(logits, jax.random.PRNGKey(i), top_p=0.75)) for i in range(400)]
    assert set(draws) == {0, 1}  # 0.5 < 0.75 <= 0.8: tokens 0 and 1 only
    share0 = draws.count(0) / len(draws)
    assert abs(share0 - 0.5 / 0.8) < 0.08  # renormalised within the nucleus


def test_classification_reader_names_file_and_line(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text('{"text": "fine", "label": "pos"}\n\n{"text": "bad", "label": "neg"}\n')
    assert read_examples(good) == [("fine", "pos"), ("bad", "neg")]
    bad = tmp_path / "b.jsonl"
    bad.write_text('{"text": "fine", "label": "pos"}\n{"text": "no label"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl:2: expected an object with 'text' and 'label'"):
        read_examples(bad)
    tsv = tmp_path / "c.tsv"
    tsv.write_text("pos\tgood film\nneg\tbad\tfilm\n")
    with pytest.raises(DataError, match=r"c\.tsv:2: expected 'label<TAB>text', got 3 fields"):
        read_examples(tsv)
    empty = tmp_path / "d.jsonl"
    empty.write_text("\n")
    with pytest.raises(DataError, match="no examples"):
        read_examples(empty)


def test_batch_at_step_s_depends_only_on_seed_and_s():
    a = [batch_indices(s, 8, 20, seed=3) for s in range(10)]
    b = [batch_indices(s, 8, 20, seed=3) for s in reversed(range(10))][::-1]
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    epoch0 = np.concatenate([batch_indices(s, 4, 20, seed=3) for s in range(5)])
    assert sorted(epoch0) == list(range(20))  # each example once per epoch
    assert not np.array_equal(batch_indices(0, 8, 20, 3), batch_indices(0, 8, 20, 4))
    assert process_slice(8, 1, 2) == slice(4, 8)


def test_bench_json_lines_carry_the_contract_keys():
    out = subprocess.run([sys.executable, "-m", "scaling_jax.commands.bench", "--json", "--preset", "tiny", "--steps", "2",
                          "--no-torch"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    assert all({"name", "tokens_per_s", "step_ms", "mfu"} <= set(r) for r in rows)
    ours = [r for r in rows if r["name"].startswith("ours/")]
    assert len(ours) == 2 and all(r["tokens_per_s"] > 0 and 0 < r["mfu"] < 1 for r in ours)
    peak = next(r for r in rows if r["name"] == "matmul_peak")
    assert peak["bf16_dots"] in ("native", "emulated", "unknown") and peak["cpu"]


def test_cpu_info_reads_bf16_dot_support_from_cpuinfo():
    from scaling_jax.hostmem import cpu_info
    intel = "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8481C\nflags\t\t: fpu avx512f amx_bf16 avx512_bf16\n"
    amd = "processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu avx2 fma avx512f\n"  # avx512f: no bf16
    arm = "processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\nCPU implementer\t: 0x41\n"
    assert cpu_info(intel) == {"cpu": "Intel(R) Xeon(R) Platinum 8481C", "bf16_dots": "native"}
    assert cpu_info(amd) == {"cpu": "AMD EPYC", "bf16_dots": "emulated"}
    assert cpu_info(arm)["bf16_dots"] == "native"
    assert cpu_info("")["bf16_dots"] == "unknown"


def test_bf16_compute_on_a_cpu_without_bf16_dots_warns(monkeypatch, caplog):
    import scaling_jax.hostmem as hostmem
    from scaling_jax.config import config_from_dict
    from scaling_jax.train.build import build_model
    monkeypatch.setattr(hostmem, "cpu_info", lambda: {"cpu": "Old CPU", "bf16_dots": "emulated"})
    cfg = config_from_dict({"run": {"name": "t"}, "model": {"family": "gpt2", "task": "causal_lm", "vocab_size": 64,
                                                            "d_model": 16, "n_layers": 1, "n_heads": 2, "max_len": 8},
                            "data": {"kind": "lm_text", "seq_len": 8}}, ["model.dtype=bfloat16"])
    with caplog.at_level("WARNING"):
        build_model(cfg)
    assert any("Old CPU" in r.getMessage() and "slower than float32" in r.getMessage() for r in caplog.records)
    caplog.clear()
    monkeypatch.setattr(hostmem, "cpu_info", lambda: {"cpu": "New CPU", "bf16_dots": "native"})
    with caplog.at_level("WARNING"):
        build_model(cfg)
    assert not any("bfloat16" in r.getMessage() for r in caplog.records)


def test_paired_ratio_is_the_per_round_ratio_under_drift():
    from scaling_jax.commands.bench import paired_ratio
    drift = [1.0, 1.0, 1.0, 1.6, 1.6]  # the machine slows down for the last two rounds
    ours = [0.5 * d for d in drift]
    ref = [0.75 * d for d in drift]  # ours is 1.5x in every round
    assert paired_ratio(ref, ours) == pytest.approx(1.5)
    ref[1] *= 3  # one round where only ref was disturbed: the median over rounds ignores it
    assert paired_ratio(ref, ours) == pytest.approx(1.5)
    assert paired_ratio(ours, ref) == pytest.approx(1 / 1.5)


def test_cli_bad_config_key_exits_non_zero_naming_the_key():
    out = subprocess.run([sys.executable, "-m", "scaling_jax.cli", "train", "configs/lm_tiny.yaml", "optim.lrr=1"],
                         capture_output=True, text=True, timeout=300,
                         cwd=__import__("pathlib").Path(__file__).resolve().parents[1])
    assert out.returncode == 2
    assert "unknown config key 'optim.lrr'" in out.stderr and "valid keys under optim" in out.stderr


def test_cli_shows_project_errors_as_one_line_and_keeps_tracebacks_for_bugs(monkeypatch, capsys):
    from scaling_jax import cli
    assert cli.main(["train", "configs/lm_tiny.yaml", "model.kernels=triton"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["scaling-jax train: error: model.kernels: 'triton' is not one of auto, xla, xla_cpu"]

    def bug(args):  # an internal ValueError / KeyError is not the user's to fix: it must surface
        raise KeyError("internal")
    monkeypatch.setattr(cli, "_fetch", bug)
    with pytest.raises(KeyError, match="internal"):
        cli.main(["fetch", "minilm-l6"])


def test_token_cache_keys_on_the_tokenizers_merges_not_its_size(tmp_path, monkeypatch):
    """Two BPEs of the same vocabulary size with other merges: each must get its own ids from the
    token cache (a key of class name + size handed one the other's)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from scaling_jax.config import config_from_dict
    from scaling_jax.data.corpus import load_lm
    from scaling_jax.data.tokenizer import tokenizer_identity

    def bpe(pair):  # five tokens each: [UNK], </s>, a, b and the one merge of `pair`
        vocab = {"[UNK]": 0, "</s>": 1, "a": 2, "b": 3, "".join(pair): 4}
        tok = Tokenizer(models.BPE(vocab=vocab, merges=[pair], unk_token="[UNK]"))
        tok.pre_tokenizer = pre_tokenizers.Whitespace()
        return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]")

    a, b = bpe(("a", "b")), bpe(("b", "a"))
    assert len(a) == len(b) and tokenizer_identity(a) != tokenizer_identity(b)
    monkeypatch.setenv("SCALING_JAX_CACHE", str(tmp_path / "cache"))
    corpus = tmp_path / "c.txt"
    corpus.write_text("abab aabb baab bbba " * 10)
    cfg = config_from_dict({"data": {"kind": "lm_text", "root": str(tmp_path), "train": ["c.txt"], "seq_len": 4}})
    store_a, store_b = load_lm(cfg, a).train.store, load_lm(cfg, b).train.store
    ids_a, ids_b = (s.read(0, s.n_tokens).tolist() for s in (store_a, store_b))
    assert ids_a == a(corpus.read_text(), add_special_tokens=False)["input_ids"] + [a.eos_token_id]
    assert ids_b == b(corpus.read_text(), add_special_tokens=False)["input_ids"] + [b.eos_token_id]
    assert ids_a != ids_b
    assert len(list((tmp_path / "cache" / "tokens").glob("*/index.json"))) == 2
