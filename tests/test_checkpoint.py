"""Checkpointer: round trips across meshes, interrupted or corrupt saves, mismatches, async errors, retention."""
from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from scaling_jax.checkpoint import Checkpointer, NoReadableCheckpointError, StepNotAboveLatestError
from scaling_jax.errors import CheckpointMismatchError
from scaling_jax.train.state import TrainState

# Leaf specs on the 2x2x2 (data, fsdp, tensor) mesh; optimizer moments follow their params.
SPECS = {"kernel": P("fsdp", "tensor"), "bias": P("tensor"), "embedding": P(("data", "fsdp"), None)}


def _init_params(rng):
    k1, k2 = jax.random.split(rng)
    return {"dense": {"kernel": jax.random.normal(k1, (8, 16)), "bias": jnp.arange(16.0)},
            "embed": {"embedding": jax.random.normal(k2, (32, 8))}}


def _init_state(rng):
    tx = optax.adamw(1e-2)
    params = _init_params(rng)
    state = TrainState.create(params, tx, rng)
    grads = jax.tree.map(jnp.ones_like, params)  # one update so the moments are not zeros
    updates, opt_state = tx.update(grads, state.opt_state, params)
    return state.replace(step=state.step + 1, params=optax.apply_updates(params, updates), opt_state=opt_state)


def _shardings(abstract, mesh, specs=SPECS):
    def leaf(path, x):
        name = str(getattr(path[-1], "key", ""))
        return NamedSharding(mesh, specs.get(name, P()) if x.ndim else P())
    return jax.tree_util.tree_map_with_path(leaf, abstract)


def _abstract(mesh, specs=SPECS):
    abstract = jax.eval_shape(_init_state, jax.random.key(0))
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        abstract, _shardings(abstract, mesh, specs))


def _host(tree):
    return jax.tree.map(lambda x: np.asarray(jax.random.key_data(x) if jax.dtypes.issubdtype(
        x.dtype, jax.dtypes.prng_key) else x), tree)


def _assert_identical(a, b):
    for (path, x), y in zip(jax.tree_util.tree_flatten_with_path(_host(a))[0], jax.tree.leaves(_host(b))):
        assert x.dtype == y.dtype and np.array_equal(x, y), jax.tree_util.keystr(path)


@pytest.fixture(scope="module")
def mesh8():
    return jax.make_mesh((2, 2, 2), ("data", "fsdp", "tensor"))


@pytest.fixture(scope="module")
def state8(mesh8):
    """The train state (params + adamw state + key) born sharded under jit on the 8-device mesh."""
    target = _abstract(mesh8)
    return jax.jit(_init_state, out_shardings=jax.tree.map(lambda x: x.sharding, target))(jax.random.key(0))


def _ckpt(path, **kw):
    kw.setdefault("every", 10)
    return Checkpointer(path, **kw)


def test_sharded_state_round_trips_bit_identical_onto_same_and_other_meshes(tmp_path, mesh8, state8):
    assert state8.params["dense"]["kernel"].sharding.spec == P("fsdp", "tensor")
    reference = _host(state8)
    donated = jax.tree.map(lambda x: x.copy(), state8)
    with _ckpt(tmp_path) as ckpt:
        assert ckpt.save(10, donated, extra={"data_step": 10, "hash": "abc"})
        jax.tree.map(lambda x: x.delete(), donated)  # the loop donates the state right after save
        ckpt.wait()

    meshes = {
        "same 2x2x2": (mesh8, SPECS),
        "4 devices (fsdp, tensor)": (jax.make_mesh((2, 2), ("fsdp", "tensor"), devices=jax.devices()[:4]),
                                     {"kernel": P("tensor", "fsdp"), "bias": P("fsdp")}),
        "data-only 8": (jax.make_mesh((8,), ("data",)), {"embedding": P("data", None)}),
    }
    with _ckpt(tmp_path) as ckpt:
        for name, (mesh, specs) in meshes.items():
            target = _abstract(mesh, specs)
            step, state, extra = ckpt.restore_latest(target)
            assert (step, extra) == (10, {"data_step": 10, "hash": "abc"}), name
            _assert_identical(state, reference)
            for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(target)):
                assert got.sharding == want.sharding, name
            assert isinstance(state, TrainState)


def test_saves_every_n_steps_unless_forced_and_refuses_a_step_not_above_the_latest(tmp_path, state8):
    with _ckpt(tmp_path, every=10, async_save=False) as ckpt:
        assert ckpt.save(5, state8, extra={}) is False
        assert ckpt.latest_step() is None
        assert ckpt.save(10, state8, extra={}) is True
        assert ckpt.save(13, state8, extra={}, force=True) is True
        for step in (13, 10):  # Orbax itself would skip these silently
            with pytest.raises(StepNotAboveLatestError, match=f"step {step}.*step 13"):
                ckpt.save(step, state8, extra={}, force=True)
        assert ckpt.all_steps() == [10, 13]


def test_restore_returns_none_only_when_there_is_no_checkpoint(tmp_path, mesh8):
    with _ckpt(tmp_path) as ckpt:
        assert ckpt.restore_latest(_abstract(mesh8)) is None


def test_abstract_state_without_shardings_is_refused(tmp_path, mesh8, state8):
    with _ckpt(tmp_path, async_save=False) as ckpt:
        ckpt.save(10, state8, extra={})
        bare = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _abstract(mesh8))
        with pytest.raises(ValueError, match="without a sharding: .*params/dense/bias"):
            ckpt.restore_latest(bare)


def _wait_until_gone(path: Path, timeout_s: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout_s  # Orbax removes tmp leftovers in a background thread
    while path.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    return not path.exists()


# A failed tensorstore read can leave a callback on an already closed asyncio loop inside Orbax;
# A failed read used to leave TensorStore callbacks on Orbax's closed event loop, which Python
# reported as "unraisable" (thousands of traceback lines on a real model). The Checkpointer drops
# exactly those; any other unraisable exception fails these tests.
_orbax_read_noise = pytest.mark.filterwarnings("error::pytest.PytestUnraisableExceptionWarning")


@_orbax_read_noise
def test_interrupted_saves_are_ignored_cleaned_up_and_the_previous_step_restored(tmp_path, mesh8, state8, caplog):
    with _ckpt(tmp_path, async_save=False) as ckpt:
        ckpt.save(10, state8, extra={"at": 10})
    # A save killed mid-write leaves Orbax's temporary directory ...
    tmp_dir = tmp_path / "20.orbax-checkpoint-tmp-1700000000"
    shutil.copytree(tmp_path / "10", tmp_dir)
    # ... and a step directory written only in part (its arrays never landed).
    shutil.copytree(tmp_path / "10", tmp_path / "30")
    for d in list((tmp_path / "30" / "state").rglob("d")):
        shutil.rmtree(d)

    with _ckpt(tmp_path) as ckpt, caplog.at_level(logging.WARNING, logger="scaling_jax.checkpoint"):
        step, state, extra = ckpt.restore_latest(_abstract(mesh8))
        assert (step, extra) == (10, {"at": 10})
        _assert_identical(state, state8)
        assert "checkpoint step 30 is unreadable" in caplog.text
        assert _wait_until_gone(tmp_dir), sorted(os.listdir(tmp_path))
        assert ckpt.latest_step() == 10
        # Resuming at step 10, the run saves step 20 and later step 30 again: the broken 30 goes.
        assert ckpt.save(20, state, extra={"at": 20})
        ckpt.save(30, state, extra={"at": 30})
        ckpt.wait()
        assert ckpt.restore_latest(_abstract(mesh8)).extra == {"at": 30}


@_orbax_read_noise
@pytest.mark.parametrize("damage", ["truncate data files", "delete data files", "delete array metadata",
                                    "overwrite data files"])
def test_corrupt_latest_is_refused_with_a_warning_and_the_previous_good_one_used(
        tmp_path, mesh8, state8, caplog, damage):
    with _ckpt(tmp_path, async_save=False) as ckpt:
        ckpt.save(10, state8, extra={"at": 10})
        ckpt.save(20, state8, extra={"at": 20})
    state_dir = tmp_path / "20" / "state"
    data_files = [f for f in state_dir.rglob("*") if f.is_file() and f.parent.name == "d"]
    assert data_files
    if damage == "truncate data files":
        for f in data_files:
            os.truncate(f, f.stat().st_size // 2)
    elif damage == "delete data files":
        for f in data_files:
            f.unlink()
    elif damage == "overwrite data files":  # same sizes, other bytes
        for f in data_files:
            f.write_bytes(np.random.default_rng(0).bytes(f.stat().st_size))
    else:
        (state_dir / "_METADATA").unlink()
    with _ckpt(tmp_path) as ckpt, caplog.at_level(logging.WARNING, logger="scaling_jax.checkpoint"):
        step, state, extra = ckpt.restore_latest(_abstract(mesh8))
    assert (step, extra) == (10, {"at": 10})
    _assert_identical(state, state8)
    assert "checkpoint step 20 is unreadable" in caplog.text


@_orbax_read_noise
def test_when_no_checkpoint_is_readable_restore_raises_instead_of_starting_over(tmp_path, mesh8, state8):
    with _ckpt(tmp_path, async_save=False) as ckpt:
        ckpt.save(10, state8, extra={})
    (tmp_path / "10" / "state" / "_METADATA").unlink()
    with _ckpt(tmp_path) as ckpt, pytest.raises(NoReadableCheckpointError, match="step 10: state metadata missing"):
        ckpt.restore_latest(_abstract(mesh8))


def _with_params(target, **changes):
    """The target with params entries replaced (None: removed); the optimizer state untouched."""
    params = dict(target.params, **changes)
    return target.replace(params={k: v for k, v in params.items() if v is not None})


@pytest.mark.parametrize("change,expected", [
    ("extra leaf", ["in the target but not the checkpoint: params/head/kernel"]),
    ("missing leaf", ["in the checkpoint but not the target:", "params/embed/embedding"]),
    ("wrong shape", ["shape/dtype differ: params/dense/kernel: saved float32[8, 16], target float32[8, 32]"]),
])
def test_a_mismatched_tree_raises_naming_the_problem(tmp_path, mesh8, state8, change, expected):
    with _ckpt(tmp_path, async_save=False) as ckpt:
        ckpt.save(10, state8, extra={})
        ckpt.save(20, state8, extra={})  # an older step must not be tried as a "fallback"
    target = _abstract(mesh8)
    rep = NamedSharding(mesh8, P())
    if change == "extra leaf":
        target = _with_params(target, head={"kernel": jax.ShapeDtypeStruct((8, 2), jnp.float32, sharding=rep)})
    elif change == "missing leaf":
        target = _with_params(target, embed=None)
    else:
        dense = dict(target.params["dense"], kernel=jax.ShapeDtypeStruct((8, 32), jnp.float32, sharding=rep))
        target = _with_params(target, dense=dense)
    with _ckpt(tmp_path) as ckpt, pytest.raises(CheckpointMismatchError) as err:
        ckpt.restore_latest(target)
    for text in [*expected, "checkpoint step 20 does not match"]:
        assert text in str(err.value)


def test_an_async_save_error_surfaces_from_wait(tmp_path, mesh8, state8, monkeypatch):
    # Root ignores read-only permissions, so fail the commit (tmp dir -> step dir) itself, as a
    # full disk or a vanished mount would. Orbax picks the commit class per filesystem; fail all.
    from orbax.checkpoint._src.path import atomicity

    async def fail(self, *args, **kwargs):
        raise OSError("simulated: no space left on device")

    with _ckpt(tmp_path) as ckpt:
        assert ckpt.save(10, state8, extra={"at": 10})
        ckpt.wait()
        with monkeypatch.context() as patch:
            for cls in (atomicity.AtomicRenameTemporaryPath, atomicity.CommitFileTemporaryPath):
                patch.setattr(cls, "finalize", fail)
            assert ckpt.save(20, state8, extra={"at": 20})  # returns before the write finishes
            with pytest.raises(OSError, match="no space left"):
                ckpt.wait()
        assert ckpt.all_steps() == [10]
        assert ckpt.restore_latest(_abstract(mesh8)).step == 10
        assert ckpt.save(20, state8, extra={"at": 20})  # the run can go on
        ckpt.wait()
        assert ckpt.all_steps() == [10, 20]


def test_retention_keeps_the_latest_for_resume_and_the_best_k_by_metric(tmp_path, mesh8):
    small = {"w": jnp.arange(8.0)}
    target = {"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh8, P("data")))}
    losses = {1: 5.0, 2: 1.0, 3: 4.0, 4: 2.0, 5: 6.0, 6: 7.0}
    with Checkpointer(tmp_path, every=1, max_to_keep=2, best_k=2, best_metric="eval/loss") as ckpt:
        for step, loss in losses.items():
            ckpt.save(step, jax.tree.map(lambda x: x + step, small), extra={"at": step},
                      metrics={"eval/loss": loss, "eval/f1": 0.5})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 4, 5, 6]  # best two by loss (2, 4) + latest two (5, 6)
        assert sorted(int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()) == [2, 4, 5, 6]
        assert ckpt.restore_latest(target).step == 6
        best = ckpt.restore_best(target)
        assert best.step == 2 and best.extra == {"at": 2}
        np.testing.assert_array_equal(best.state["w"], np.arange(8.0) + 2)
        with pytest.raises(KeyError, match="eval/loss"):
            ckpt.save(7, small, extra={}, metrics={"eval/f1": 0.9})
        ckpt.save(7, small, extra={})  # no eval this time: kept as latest, never as best
    # A new process sees the same ranking (Orbax stores the metrics with each step).
    with Checkpointer(tmp_path, every=1, max_to_keep=2, best_k=2, best_metric="eval/loss") as ckpt:
        ckpt.save(8, small, extra={}, metrics={"eval/loss": 0.5})
        ckpt.wait()
        assert ckpt.all_steps() == [2, 7, 8]
        assert ckpt.restore_best(target).step == 8
    with Checkpointer(tmp_path, every=1, max_to_keep=1, best_k=1, best_metric="eval/acc", best_mode="max") as ckpt:
        assert ckpt.restore_best(target) is None  # no checkpoint carries eval/acc


def test_read_only_checkpointer_restores_and_leaves_the_directory_alone(tmp_path, mesh8):
    small = {"w": jnp.arange(8.0)}
    target = {"w": jax.ShapeDtypeStruct((8,), jnp.float32, sharding=NamedSharding(mesh8, P()))}
    with Checkpointer(tmp_path, every=1, async_save=False) as ckpt:
        ckpt.save(1, small, extra={})
    in_flight = tmp_path / "2.orbax-checkpoint-tmp-1700000000"  # another process's save
    in_flight.mkdir()
    with Checkpointer(tmp_path, every=1, read_only=True) as reader:
        assert reader.restore_latest(target).step == 1
        with pytest.raises(ValueError, match="read-only"):
            reader.save(2, small, extra={})
    assert in_flight.exists()


@_orbax_read_noise
def test_a_flipped_bit_in_array_data_is_caught_and_the_previous_step_used(tmp_path, mesh8, caplog):
    # Random bits do not compress, so the array's bytes lie verbatim in the OCDBT data files
    # (checkpoints/N/state/ocdbt.process_0/d/...): flip one of them, keeping the file's size.
    bits = jax.random.bits(jax.random.key(1), (64, 64), jnp.uint32)
    sharding = NamedSharding(mesh8, P("data", "tensor"))
    state = {"w": jax.device_put(bits, sharding), "b": jnp.arange(16.0)}
    target = {"w": jax.ShapeDtypeStruct((64, 64), jnp.uint32, sharding=sharding),
              "b": jax.ShapeDtypeStruct((16,), jnp.float32, sharding=NamedSharding(mesh8, P()))}
    with _ckpt(tmp_path, async_save=False) as ckpt:
        ckpt.save(10, state, extra={"at": 10})
        ckpt.save(20, state, extra={"at": 20})
    needle = np.asarray(bits)[0, :16].tobytes()  # the start of the first shard (rows 0-31, cols 0-31)
    hits = [f for f in (tmp_path / "20" / "state").rglob("*")
            if f.is_file() and f.parent.name == "d" and needle in f.read_bytes()]
    assert len(hits) == 1 and "ocdbt.process_0" in str(hits[0]), hits
    raw = bytearray(hits[0].read_bytes())
    raw[raw.index(needle) + 5] ^= 0x10
    hits[0].write_bytes(bytes(raw))
    with _ckpt(tmp_path) as ckpt, caplog.at_level(logging.WARNING, logger="scaling_jax.checkpoint"):
        step, restored, extra = ckpt.restore_latest(target)
    assert (step, extra) == (10, {"at": 10})
    np.testing.assert_array_equal(np.asarray(restored["w"]), np.asarray(bits))
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "checkpoint step 20 is unreadable (array w does not match the checksum" in warnings[0]
    assert "using step 10 instead" in warnings[0]


def test_checksums_ignore_the_sharding_and_see_one_flipped_bit_in_any_dtype(mesh8):
    from scaling_jax.checksum import tree_checksums
    rng = np.random.default_rng(0)
    arrays = {"f32": rng.normal(size=(8, 16)).astype(np.float32), "bf16": rng.normal(size=(8, 16)).astype(jnp.bfloat16),
              "i8": rng.integers(-128, 127, (8, 16), dtype=np.int8), "mask": rng.random((8, 16)) < 0.5,
              "scalar": np.float32(3.5)}
    shards = {"row": NamedSharding(mesh8, P(("data", "fsdp"), "tensor")), "col": NamedSharding(mesh8, P(None, "data")),
              "one": NamedSharding(mesh8, P())}
    sums = {name: tree_checksums({k: jax.device_put(v, NamedSharding(s.mesh, P()) if np.ndim(v) == 0 else s)
                                  for k, v in arrays.items()}) for name, s in shards.items()}
    assert sums["row"] == sums["col"] == sums["one"]
    key = jax.random.key(3)
    assert tree_checksums({"k": key}) == tree_checksums({"k": jax.random.key(3)}) != tree_checksums({"k": jax.random.key(4)})
    for name, a in arrays.items():
        for index in (0, a.size - 1):
            flipped = a.copy().reshape(-1)
            if a.dtype == bool:
                flipped[index] = ~flipped[index]
            else:
                view = flipped.view(np.uint8 if a.dtype.itemsize == 1 else np.uint16 if a.dtype.itemsize == 2 else np.uint32)
                view[index] ^= 1 << (view.dtype.itemsize * 8 - 1)  # the top bit: the sign
            flipped = flipped.reshape(a.shape)
            changed = tree_checksums({**arrays, name: flipped})
            assert changed[name] != sums["one"][name], (name, index)
            assert {k: v for k, v in changed.items() if k != name} == {k: v for k, v in sums["one"].items() if k != name}
    # Two values swapped: the same multiset of words, caught by the index-weighted sums.
    swapped = arrays["f32"].copy()
    swapped[0, 0], swapped[0, 1] = swapped[0, 1], swapped[0, 0]
    assert tree_checksums({"f32": swapped})["f32"] != sums["one"]["f32"]


def test_only_the_late_callbacks_of_an_abandoned_read_are_kept_quiet(monkeypatch):
    import asyncio
    import sys
    from types import SimpleNamespace

    from scaling_jax import checkpoint
    seen = []
    monkeypatch.setattr(sys, "unraisablehook", seen.append)
    checkpoint._quiet_abandoned_reads()
    checkpoint._quiet_abandoned_reads()  # once is enough: not wrapped twice
    loop = asyncio.new_event_loop()
    loop.close()
    try:  # what a TensorStore read that finishes after the restore gave up runs into
        loop.call_soon_threadsafe(lambda: None)
    except RuntimeError as e:
        late = e
    before = checkpoint.ABANDONED_READS[0]
    sys.unraisablehook(SimpleNamespace(exc_type=RuntimeError, exc_value=late, exc_traceback=late.__traceback__,
                                       object=None, err_msg=None))
    assert seen == [] and checkpoint.ABANDONED_READS[0] == before + 1
    other = SimpleNamespace(exc_type=RuntimeError, exc_value=RuntimeError("Event loop is closed"),
                            exc_traceback=None, object=None, err_msg=None)  # not from call_soon_threadsafe
    sys.unraisablehook(other)
    assert seen == [other]
