"""Reading prepared tokens: windows equal to today's in-memory windows, the batch of a step a pure
function of (seed, step) from any starting step, each process reading only its devices' rows (once
each), the prefetching feed, validation by whole documents, lm_text through the token cache."""
from pathlib import Path

import jax
import numpy as np
import pytest

from scaling_jax.config import config_from_dict, load_config
from scaling_jax.data import prepare as prep
from scaling_jax.data import shards
from scaling_jax.data.corpus import load_lm
from scaling_jax.data.packing import segments_from_eos
from scaling_jax.data.sampler import batch_indices
from scaling_jax.data.sources import file_source
from scaling_jax.data.tokenizer import load_tokenizer
from scaling_jax.data.tokens import TokenWindows
from scaling_jax.errors import ConfigError, DataError, MissingFileError
from scaling_jax.mesh import batch_sharding, make_mesh
from scaling_jax.train.batches import global_batch, process_rows
from scaling_jax.train.feed import BatchFeed

REPO = Path(__file__).resolve().parents[1]
WORKS = ["sonnets_gut.txt", "lovers_complaint_gut.txt", "phoenix_and_the_turtle_gut.txt"]


@pytest.fixture(scope="module")
def gpt2(shared_data):
    return load_tokenizer(shared_data / "gpt2-tokenizer")


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, shared_data, gpt2):
    """A store of three works in shards of ~20 kB of text (so windows straddle shard boundaries),
    and the reference: each file tokenized whole by transformers, then EOS (today's path)."""
    files = [shared_data / "shakespeare" / w for w in WORKS]
    store = tmp_path_factory.mktemp("prepared") / "train"
    prep.prepare_store(store, file_source(files, "text", 8192, True), gpt2, shard_bytes=20_000, progress=False)
    ref = []
    for f in files:
        ref += gpt2(f.read_text(), add_special_tokens=False)["input_ids"] + [gpt2.eos_token_id]
    return store, np.asarray(ref)


def test_windows_equal_todays_in_memory_windows_across_shard_boundaries(prepared):
    path, ref = prepared
    store = shards.open_store(path)
    assert len(store.maps) >= 5
    ds = TokenWindows(store, 32)
    windows = ref[: len(ref) // 32 * 32].reshape(-1, 32)
    assert len(ds) == len(windows)
    np.testing.assert_array_equal(ds.take(np.arange(len(ds)))["input_ids"], windows)
    for step in (0, 7, 1234):  # 1234 * 8 is past one epoch: a fresh permutation, as in-memory
        idx = batch_indices(step, 8, len(ds), seed=3)
        batch = ds.take(idx)
        np.testing.assert_array_equal(batch["input_ids"], windows[idx])
        assert batch["input_ids"].dtype == np.int32 and batch["attention_mask"].all()


class _Recording:
    """A dataset that records which examples it was asked for."""

    def __init__(self, ds):
        self.ds, self.reads = ds, []

    def __len__(self):
        return len(self.ds)

    def take(self, idx):
        self.reads.append(np.asarray(idx).tolist())
        return self.ds.take(idx)


def test_each_process_reads_only_the_rows_its_devices_hold_once_each(prepared):
    path, _ = prepared
    ds = TokenWindows(shards.open_store(path), 32)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    bsh = batch_sharding(mesh)
    idx = batch_indices(5, 8, len(ds), seed=0)
    rec = _Recording(ds)
    batch = global_batch(rec, idx, bsh)
    assert rec.reads == [idx.tolist()], "8 rows on 8 devices (tensor=2 holds each row twice): one read of each"
    np.testing.assert_array_equal(np.asarray(batch["input_ids"]), ds.take(idx)["input_ids"])
    assert batch["input_ids"].sharding == bsh

    # The rows of a process = the rows its devices hold: split the 8 devices as 2 processes would be.
    full = bsh.devices_indices_map((8,))

    class Part:  # what `addressable_devices_indices_map` returns in the process holding `devices`
        def __init__(self, devices):
            self.devices = devices

        def addressable_devices_indices_map(self, shape):
            return {d: i for d, i in bsh.devices_indices_map(shape).items() if d in self.devices}
    halves = [set(mesh.devices.reshape(2, -1)[k]) for k in range(2)]
    rows = [process_rows(Part(h), 8) for h in halves]
    assert not set(rows[0]) & set(rows[1]) and sorted([*rows[0], *rows[1]]) == list(range(8))
    for h, r in zip(halves, rows):
        held = {i for d in h for i in range(*full[d][0].indices(8))}
        assert held == set(r.tolist())


def test_a_feed_from_any_step_gives_the_batches_of_one_from_step_0(prepared):
    path, _ = prepared
    ds = TokenWindows(shards.open_store(path), 32)
    bsh = batch_sharding(make_mesh(data=4, fsdp=2, tensor=1))
    with BatchFeed(ds, 8, 11, bsh, 0, 12) as feed:
        first = [np.asarray(feed.get(s)["input_ids"]) for s in range(12)]
    with BatchFeed(ds, 8, 11, bsh, 7, 12, depth=2) as feed:  # a resumed run: a new feed at its step
        resumed = [np.asarray(feed.get(s)["input_ids"]) for s in range(7, 12)]
    for s, got in enumerate(first):
        np.testing.assert_array_equal(got, ds.take(batch_indices(s, 8, len(ds), 11))["input_ids"])
    for a, b in zip(first[7:], resumed):
        np.testing.assert_array_equal(a, b)


def test_a_read_error_in_the_feed_thread_surfaces_at_its_step(prepared):
    path, _ = prepared
    ds = TokenWindows(shards.open_store(path), 32)

    class Failing(_Recording):
        def take(self, idx):
            if len(self.reads) == 2:
                raise DataError("shard-00003.tokens: unreadable")
            return super().take(idx)
    bsh = batch_sharding(make_mesh(data=-1))
    with BatchFeed(Failing(ds), 8, 0, bsh, 0, 10) as feed:
        feed.get(0), feed.get(1)
        with pytest.raises(DataError, match="shard-00003.tokens: unreadable"):
            feed.get(2)


def test_valid_documents_hold_out_whole_documents(prepared, gpt2):
    path, ref = prepared
    cfg = config_from_dict({"data": {"kind": "tokens", "prepared": str(path.parent), "seq_len": 32,
                                     "valid_documents": 1}})
    data = load_lm(cfg, gpt2)
    cut = int(shards.open_store(path).doc_ends[-2])  # the last document (the Phoenix) starts here
    assert ref[cut - 1] == gpt2.eos_token_id
    train_windows = ref[: cut // 32 * 32].reshape(-1, 32)
    valid_windows = ref[cut: cut + (len(ref) - cut) // 32 * 32].reshape(-1, 32)
    np.testing.assert_array_equal(data.train.take(np.arange(len(data.train)))["input_ids"], train_windows)
    np.testing.assert_array_equal(data.valid.take(np.arange(len(data.valid)))["input_ids"], valid_windows)
    assert data.notes["train_documents"] == 2
    with pytest.raises(DataError, match="cannot hold out 3 of its 3 documents"):
        load_lm(config_from_dict({"data": {"kind": "tokens", "prepared": str(path.parent), "valid_documents": 3}}),
                gpt2)


def test_tokens_kind_names_a_missing_preparation_and_a_missing_directory_key(tmp_path, gpt2):
    with pytest.raises(ConfigError, match="data.prepared: data.kind=tokens reads a prepared directory"):
        config_from_dict({"data": {"kind": "tokens"}})
    cfg = config_from_dict({"data": {"kind": "tokens", "prepared": str(tmp_path / "nowhere")}})
    with pytest.raises(MissingFileError, match="run `scaling-jax prepare CONFIG` first"):
        load_lm(cfg, gpt2)


def test_lm_text_prepares_into_the_cache_once_and_reads_todays_windows(tmp_path, shared_data, gpt2, monkeypatch):
    monkeypatch.setenv("SCALING_JAX_CACHE", str(tmp_path / "cache"))
    cfg = load_config(REPO / "configs/lm_tiny.yaml", ["data.train=[shakespeare/*_gut.txt]",
                                                      "data.valid=[shakespeare/sonnets_gut.txt]",
                                                      "data.test=[shakespeare/lovers_complaint_gut.txt]",
                                                      f"data.root={shared_data}", "data.seq_len=64"])
    # Only these three files for speed: the train glob minus the held-out works is checked below.
    small = ["data.train=[shakespeare/sonnets_gut.txt, shakespeare/phoenix_and_the_turtle_gut.txt, "
             "shakespeare/lovers_complaint_gut.txt]", "data.valid=[shakespeare/lovers_complaint_gut.txt]",
             f"data.root={shared_data}", "data.seq_len=64"]
    cfg_small = load_config(REPO / "configs/lm_tiny.yaml", small)
    data = load_lm(cfg_small, gpt2)
    ref = []
    for w in ("sonnets_gut.txt", "phoenix_and_the_turtle_gut.txt"):  # the held-out work is not trained on
        ref += gpt2((shared_data / "shakespeare" / w).read_text(), add_special_tokens=False)["input_ids"] + [50256]
    ref = np.asarray(ref)
    np.testing.assert_array_equal(data.train.take(np.arange(len(data.train)))["input_ids"],
                                  ref[: len(ref) // 64 * 64].reshape(-1, 64))
    assert data.valid is not None and data.test is None
    assert len(list((tmp_path / "cache" / "tokens").glob("*/index.json"))) == 2  # one store per split

    def no_tokenizing(tok):
        raise AssertionError("the cache was not used")
    monkeypatch.setattr(prep, "make_encoder", no_tokenizing)
    monkeypatch.setattr(prep, "text_splitting", lambda tok: True)
    again = load_lm(cfg_small, gpt2)
    assert len(again.train) == len(data.train)
    assert "segment_ids" not in again.train.take(np.arange(2))  # lm_text packs no documents by default
    masked = load_lm(load_config(REPO / "configs/lm_tiny.yaml", [*small, "data.pack=true"]), gpt2)
    rows = masked.train.take(np.arange(len(masked.train)))  # data.pack: true = document masking
    want_seg, want_pos = segments_from_eos(rows["input_ids"], 50256)
    np.testing.assert_array_equal(rows["segment_ids"], want_seg)
    np.testing.assert_array_equal(rows["positions"], want_pos)
    assert rows["segment_ids"].max() == 2 and masked.notes["document_masking"]  # the EOS after sonnets cuts one row

    from scaling_jax.data.corpus import split_sources
    monkeypatch.undo()
    sources = split_sources(cfg, gpt2)
    train_names = {Path(f["path"]).name for f in sources["train"].identity["files"]}
    assert len(train_names) == 40 and not train_names & {"sonnets_gut.txt", "lovers_complaint_gut.txt"}
