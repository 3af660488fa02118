"""`prepare`: token shards equal to tokenizing each document whole (transformers' own call, today's
path), the index, reruns that keep finished shards, interrupted runs that leave no complete-looking
shard, JSON lines / parquet / `datasets` sources, and bad input as one clear error losing nothing."""
import json
import os
from pathlib import Path

import numpy as np
import pytest

from scaling_jax.config import config_from_dict
from scaling_jax.data import prepare as prep
from scaling_jax.data import shards
from scaling_jax.data.corpus import load_lm, prepare_corpus
from scaling_jax.data.sources import file_source
from scaling_jax.data.tokenizer import load_tokenizer, tokenizer_identity
from scaling_jax.errors import DataError, MissingFileError, OutputExistsError

WORKS = ["sonnets_gut.txt", "lovers_complaint_gut.txt", "phoenix_and_the_turtle_gut.txt"]


@pytest.fixture(scope="module")
def gpt2(shared_data):
    return load_tokenizer(shared_data / "gpt2-tokenizer")


def _reference(tok, texts):
    """Today's path: each document tokenized as one string by transformers, then EOS."""
    out = []
    for t in texts:
        out += tok(t, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    return out


def _prepare(store, files, tok, piece_bytes=8192, shard_bytes=40_000, **kw):
    src = file_source(files, "text", piece_bytes, prep.text_splitting(tok))
    return prep.prepare_store(store, src, tok, shard_bytes=shard_bytes, progress=False, **kw)


def _stream(store, tok=None):
    s = shards.open_store(store, tokenizer_identity(tok) if tok else None)
    return s.read(0, s.n_tokens).tolist()


def _files_state(store):
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(store.iterdir()) if p.name != ".lock"}


def test_shards_hold_each_file_tokenized_whole_plus_eos_with_an_index(tmp_path, shared_data, gpt2):
    files = [shared_data / "shakespeare" / w for w in WORKS]
    store = tmp_path / "store"
    index = _prepare(store, files, gpt2)  # 8 KiB pieces: the sonnets are cut ~12 times mid-file
    want = _reference(gpt2, [f.read_text() for f in files])
    assert _stream(store, gpt2) == want
    assert index["dtype"] == "<u2" and index["tokenizer"]["vocab_size"] == 50257  # GPT-2's ids fit uint16
    assert index["tokenizer"]["sha256"] == tokenizer_identity(gpt2)["sha256"]
    assert index["documents"] == 3 and index["tokens"] == len(want) and index["eos_id"] == 50256
    assert [f["path"] for f in index["source"]["files"]] == [str(f.resolve()) for f in files]
    assert index["source"]["files"][0]["bytes"] == files[0].stat().st_size
    assert len(index["shards"]) >= 3, "40 kB of source per shard: the sonnets alone fill two"
    for entry in index["shards"]:
        raw = (store / f"{entry['name']}.tokens").read_bytes()
        assert len(raw) == 2 * entry["tokens"] and shards.sha256_file(store / f"{entry['name']}.tokens") == entry["sha256"]
    s = shards.open_store(store)
    ends = [len(_reference(gpt2, [f.read_text() for f in files[:k + 1]])) for k in range(3)]
    assert s.doc_ends.tolist() == ends  # documents end where each file's EOS is
    assert isinstance(s.maps[0], np.memmap)


def test_rerun_keeps_finished_shards_and_an_interrupted_run_leaves_none_that_looks_complete(
        tmp_path, shared_data, gpt2, monkeypatch):
    files = [shared_data / "shakespeare" / w for w in WORKS]
    ref = tmp_path / "ref"
    _prepare(ref, files, gpt2)
    want = _stream(ref)
    before = _files_state(ref)

    def no_tokenizing(*args):
        raise AssertionError("a finished store was tokenized again")
    with monkeypatch.context() as m:
        m.setattr(prep, "_tokenize_shard", no_tokenizing)
        _prepare(ref, files, gpt2)
    assert _files_state(ref) == before, "a rerun on a finished store rewrites nothing"

    # Interrupt the write of shard 2's tokens (after its temporary file is written and fsynced).
    store = tmp_path / "store"
    real_replace = os.replace

    def crash_on_shard_2(src, dst):
        if Path(dst).name == "shard-00002.tokens":
            raise KeyboardInterrupt("killed")
        return real_replace(src, dst)
    with monkeypatch.context() as m:
        m.setattr(shards.os, "replace", crash_on_shard_2)
        with pytest.raises(KeyboardInterrupt):
            _prepare(store, files, gpt2)
    names = {p.name for p in store.iterdir()}
    assert "index.json" not in names and "shard-00002.json" not in names and "shard-00002.tokens" not in names
    assert {"shard-00000.json", "shard-00001.json"} <= names
    with pytest.raises(MissingFileError, match="no index.json"):
        shards.open_store(store)
    kept = {n: v for n, v in _files_state(store).items() if n.startswith(("shard-00000", "shard-00001"))}

    written = []
    real_write = shards.write_shard

    def recording(store, i, *args):
        written.append(i)
        return real_write(store, i, *args)
    monkeypatch.setattr(shards, "write_shard", recording)
    _prepare(store, files, gpt2)
    assert written == list(range(2, len(json.loads((ref / "index.json").read_text())["shards"]))), \
        "the rerun tokenizes the unfinished shards only"
    assert {n: v for n, v in _files_state(store).items() if n in kept} == kept, "finished shards kept as they were"
    assert not list(store.glob("*.tmp.*")), "the interrupted writer's temporary file is cleaned up"
    assert _stream(store) == want


def test_a_truncated_shard_is_named_and_rebuilt_alone(tmp_path, shared_data, gpt2, monkeypatch):
    files = [shared_data / "shakespeare" / w for w in WORKS]
    store = tmp_path / "store"
    _prepare(store, files, gpt2)
    want = _stream(store)
    victim = store / "shard-00001.tokens"
    victim.write_bytes(victim.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"shard-00001\.tokens: .*truncated"):
        shards.open_store(store)
    others = {n: v for n, v in _files_state(store).items() if not n.startswith("shard-00001") and n != "index.json"}
    written = []
    real_write = shards.write_shard
    monkeypatch.setattr(shards, "write_shard", lambda store, i, *a: written.append(i) or real_write(store, i, *a))
    _prepare(store, files, gpt2)
    assert written == [1]
    assert {n: v for n, v in _files_state(store).items() if n in others} == others
    assert _stream(store) == want


def test_an_index_that_disagrees_with_its_shards_is_named(tmp_path, shared_data, gpt2):
    files = [shared_data / "shakespeare" / w for w in WORKS[1:]]
    store = tmp_path / "store"
    _prepare(store, files, gpt2, shard_bytes=1000)
    index = json.loads((store / "index.json").read_text())
    good = (store / "index.json").read_text()
    index["shards"][0]["tokens"] += 1
    index["tokens"] += 1
    (store / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"shard-00000\.tokens: .* bytes, but .*index\.json says"):
        shards.open_store(store)
    index = json.loads(good)
    index["shards"][1]["sha256"] = "0" * 64
    (store / "index.json").write_text(json.dumps(index))
    with pytest.raises(DataError, match=r"index\.json: disagrees with .*shard-00001\.json on sha256"):
        shards.open_store(store)
    (store / "index.json").write_text("{not json")
    with pytest.raises(DataError, match=r"index\.json: unreadable index"):
        shards.open_store(store)
    _prepare(store, files, gpt2, shard_bytes=1000)  # the index is derived data: written again from the shards
    assert json.loads((store / "index.json").read_text()) == json.loads(good)


def _other_tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.train_from_iterator(["From fairest creatures we desire increase"] * 20,
                            trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "</s>"],
                                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="[UNK]")


def test_shards_of_another_tokenizer_are_refused_naming_both_and_kept(tmp_path, shared_data, gpt2):
    files = [shared_data / "shakespeare" / WORKS[1]]
    store = tmp_path / "store"
    _prepare(store, files, gpt2)
    before = {n: shards.sha256_file(store / n) for n in _files_state(store)}
    other = _other_tokenizer()
    mine = f"{type(gpt2).__name__} sha256 {tokenizer_identity(gpt2)['sha256'][:16]}"
    theirs = f"{type(other).__name__} sha256 {tokenizer_identity(other)['sha256'][:16]}"
    with pytest.raises(DataError, match=rf"prepared with tokenizer {mine}, but the config's tokenizer is {theirs}"):
        shards.open_store(store, tokenizer_identity(other))
    with pytest.raises(OutputExistsError, match=rf"tokenizer {mine}, not the config's {theirs}"):
        _prepare(store, files, other)
    assert {n: shards.sha256_file(store / n) for n in _files_state(store)} == before


def test_a_file_that_is_not_utf8_is_named_with_its_line_and_finished_shards_are_kept(tmp_path, shared_data, gpt2,
                                                                                      monkeypatch, capsys):
    from scaling_jax import cli
    good = [shared_data / "shakespeare" / w for w in WORKS[1:]]
    bad = tmp_path / "data" / "zz_bad.txt"
    bad.parent.mkdir()
    bad.write_bytes(b"first line\nsecond line\nthird \xff\xfe line\n")
    for f in good:
        (tmp_path / "data" / f.name).write_bytes(f.read_bytes())
    store = tmp_path / "prepared"
    tok_dir = shared_data / "gpt2-tokenizer"
    args = ["prepare", str(Path(__file__).resolve().parents[1] / "configs/lm_tiny.yaml"), "data.kind=tokens",
            f"data.root={tmp_path / 'data'}", "data.train=[\"*.txt\"]", "data.valid=[]", f"data.prepared={store}",
            f"data.tokenizer={tok_dir}"]
    monkeypatch.setattr(prep, "SHARD_BYTES", 1)  # one shard per file: the bad file's is the last
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()  # (above it: the progress bar)
    assert err[-1] == (f"scaling-jax prepare: error: {bad} line 3: not UTF-8 (byte 0xff at offset 29); convert "
                       f"the file to UTF-8")
    assert not any("Traceback" in line for line in err)
    kept = _files_state(store / "train")
    assert {"shard-00000.json", "shard-00001.json"} <= set(kept) and "index.json" not in kept
    bad.write_text("first line\nsecond line\nthird line\n")
    assert cli.main(args) == 0
    assert {n: v for n, v in _files_state(store / "train").items() if n in kept} == kept
    texts = [f.read_text() for f in sorted((tmp_path / "data").glob("*.txt"))]
    assert _stream(store / "train", gpt2) == _reference(gpt2, texts)
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["split"] == "train" and line["documents"] == 3 and line["tokens"] == len(_reference(gpt2, texts))


def test_json_lines_parquet_and_a_datasets_source_give_one_document_per_row(tmp_path, gpt2):
    import datasets
    import pyarrow as pa
    import pyarrow.parquet as pq
    rows = ["Shall I compare thee to a summer's day?", "Thou art more lovely and more temperate:",
            "Rough winds do shake the darling buds of May,", "And summer's lease hath all too short a date;"]
    jl = tmp_path / "a.jsonl"
    jl.write_text("\n".join(json.dumps({"body": r, "id": i}) for i, r in enumerate(rows[:3])) + "\n\n")
    pqf = tmp_path / "b.parquet"
    pq.write_table(pa.table({"body": rows}), pqf, row_group_size=3)  # two row groups
    src = file_source([jl, pqf], "body", 16, True)  # 16-byte pieces: one JSON line each
    prep.prepare_store(tmp_path / "files", src, gpt2, text_field="body", progress=False)
    assert _stream(tmp_path / "files") == _reference(gpt2, rows[:3] + rows)
    assert shards.open_store(tmp_path / "files").n_documents == 7

    saved = tmp_path / "saved"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"body": rows[1:]}),
                          "validation": datasets.Dataset.from_dict({"body": rows[:1]})}).save_to_disk(str(saved))
    cfg = config_from_dict({"data": {"kind": "tokens", "source": str(saved), "text_field": "body",
                                     "prepared": str(tmp_path / "ds"), "seq_len": 4}})
    dirs = prepare_corpus(cfg, gpt2, progress=False)
    assert set(dirs) == {"train", "valid"}
    assert _stream(dirs["train"]) == _reference(gpt2, rows[1:]) and _stream(dirs["valid"]) == _reference(gpt2, rows[:1])
    data = load_lm(cfg, gpt2)
    assert len(data.train) == len(_reference(gpt2, rows[1:])) // 4 and data.valid is not None

    jl.write_text(json.dumps({"body": "fine"}) + "\n" + json.dumps({"text": "no body"}) + "\n")
    with pytest.raises(DataError, match=r"a\.jsonl line 2: expected an object with a text field 'body'"):
        prep.prepare_store(tmp_path / "bad", file_source([jl], "body", 1 << 20, True), gpt2, text_field="body",
                           progress=False)


def test_a_tokenizer_that_marks_text_starts_keeps_plain_text_files_whole(gpt2):
    """SentencePiece-style prefix spaces change the ids at a cut: such tokenizers never get cut files."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    tok.train_from_iterator(["First line of the probe. Second line"] * 20,
                            trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"]))
    spm_like = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="</s>", unk_token="<unk>")
    assert prep.text_splitting(gpt2) is True
    assert prep.text_splitting(spm_like) is False
