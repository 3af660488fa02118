"""Orbax checkpoints of the train state: latest k for resume, best k by a metric, restored into target shardings."""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import sys
import traceback
from typing import Any, NamedTuple

import jax
import numpy as np
import orbax.checkpoint as ocp

from scaling_jax.checksum import tree_checksums
from scaling_jax.errors import CheckpointMismatchError, ConfigError, NoReadableCheckpointError
from scaling_jax.tree import path_str as _path_str

log = logging.getLogger(__name__)

_STATE, _EXTRA = "state", "extra"  # item names inside each step directory
_CHECKSUMS = "__checksums__"  # the key in `extra` that holds the step's checksums (removed on restore)


class StepNotAboveLatestError(ValueError):
    """A save at a step that is not above the latest checkpoint (Orbax would silently skip it)."""


class Restored(NamedTuple):
    step: int
    state: Any  # the target's pytree, each leaf a jax.Array in the target's sharding
    extra: dict  # the JSON saved with it


class _Unreadable(Exception):
    """Internal: one step cannot be read (corrupt, partial, missing metadata); try an older one."""


class Checkpointer:
    """One Orbax `CheckpointManager` over `directory`; every step directory holds two items:
    `state` (the pytree of arrays, `StandardSave`) and `extra` (a JSON dict, `JsonSave`).

    Retention is the union of two Orbax preservation policies: `LatestN(max_to_keep)`, so the
    newest checkpoints for resume are never evicted by best-k retention, and, when `best_k > 0`,
    `BestN(best_k)` ranked by `metrics[best_metric]`. One directory, no copies.

    Integrity: every save records a checksum of each array (`scaling_jax.checksum`, computed on
    device, independent of the sharding) and of `extra`, committed with the step; a restore
    recomputes them and treats a step whose bytes changed (a flipped bit) as unreadable.

    Multi-host: every process calls every method with the same arguments (Orbax does the
    coordination). `extra` must be the same on every process; Orbax writes the primary's copy.
    Not thread-safe (Orbax's manager is not). Use as a context manager or call `close()`.
    """

    def __init__(self, directory: str | os.PathLike, *, every: int, max_to_keep: int = 3, best_k: int = 0,
                 best_metric: str = "eval/loss", best_mode: str = "min", async_save: bool = True,
                 read_only: bool = False):
        """`every`: save() writes when `step % every == 0` (or `force`). `max_to_keep` (>= 1):
        newest checkpoints kept. `best_k` (>= 0): best checkpoints by `best_metric` kept as well,
        `best_mode` "min" or "max". `read_only`: restore only; no directory creation, no clean-up
        of other writers' temporary directories (for evaluators reading a live run)."""
        if every < 1:
            raise ConfigError(f"checkpoint every={every}: must be >= 1")
        if max_to_keep < 1:
            raise ConfigError(f"checkpoint max_to_keep={max_to_keep}: must be >= 1 (the latest is what resume needs)")
        if best_k < 0:
            raise ConfigError(f"checkpoint best_k={best_k}: must be >= 0")
        if best_mode not in ("min", "max"):
            raise ConfigError(f"checkpoint best_mode={best_mode!r}: must be 'min' or 'max'")
        path = os.fspath(directory)
        self.directory = path if "://" in path else os.path.abspath(path)
        self.every, self.max_to_keep, self.best_k = every, max_to_keep, best_k
        self.best_metric, self.best_mode = best_metric, best_mode
        self._read_only = read_only
        self._bad_steps: set[int] = set()  # found unreadable by restore_latest; deleted at the next save

        policies = [ocp.checkpoint_managers.LatestN(n=max_to_keep)]
        if best_k:
            # BestN sorts ascending by the metric and keeps the last n, so "min" reverses.
            policies.append(ocp.checkpoint_managers.BestN(
                get_metric_fn=self._metric_of, reverse=best_mode == "min", n=best_k,
                keep_checkpoints_without_metrics=False))
        options = ocp.CheckpointManagerOptions(
            read_only=read_only,
            create=not read_only,
            # Orbax removes `<step>.orbax-checkpoint-tmp*` leftovers of interrupted saves (in the
            # background; awaited before the next save). Finalized steps are never touched.
            cleanup_tmp_directories=not read_only,
            enable_async_checkpointing=async_save,
            preservation_policy=ocp.checkpoint_managers.AnyPreservationPolicy(policies),
            # best_fn makes Orbax write the metrics with each step and rank by them (best_step);
            # retention itself is the preservation policy above.
            best_fn=self._metric_of if best_k else None,
            best_mode=best_mode,
        )
        registry = ocp.handlers.create_default_handler_registry(
            **{_STATE: ocp.handlers.StandardCheckpointHandler(), _EXTRA: ocp.handlers.JsonCheckpointHandler()})
        self._manager = ocp.CheckpointManager(self.directory, options=options, handler_registry=registry)

    def _metric_of(self, metrics: dict) -> float:
        """The ranking value; a checkpoint whose metrics lack it (older config) ranks worst."""
        try:
            value = float(metrics[self.best_metric])
        except (KeyError, TypeError, ValueError):
            value = math.nan
        if math.isnan(value):
            return math.inf if self.best_mode == "min" else -math.inf
        return value

    # ---------------------------------------------------------------- steps

    def all_steps(self) -> list[int]:
        """Steps on disk (an async save in flight included), oldest first; steps that a restore
        found unreadable are left out."""
        return sorted(s for s in self._manager.all_steps() if s not in self._bad_steps)

    def latest_step(self) -> int | None:
        steps = self.all_steps()
        return steps[-1] if steps else None

    # ---------------------------------------------------------------- save

    def save(self, step: int, state: Any, *, extra: dict, metrics: dict | None = None,
             force: bool = False) -> bool:
        """Saves `state` (a pytree of jax.Arrays, possibly sharded) and `extra` (a JSON dict) as
        `step` when `step % every == 0` or `force`; returns whether it saved.

        Async by default: returns once the arrays are copied off the device, so the caller may
        donate `state` to the next step right away; the write finishes in the background and its
        error, if any, is raised by the next `save`, `wait`, `restore_*` or `close`.

        `metrics`: when `best_k > 0`, must hold `best_metric` for this step to compete for best-k
        (None: not a candidate; a NaN value is logged and not a candidate either).

        Raises StepNotAboveLatestError when `step` is not above `latest_step()` (Orbax would write
        nothing and say nothing). A loop that saves once more at the end or on preemption checks
        `latest_step() != step` first.
        """
        if not force and step % self.every:
            return False
        if self._read_only:
            raise ValueError(f"{self.directory}: this Checkpointer is read-only")
        if not isinstance(extra, dict):
            raise TypeError(f"extra must be a JSON dict, got {type(extra).__name__}")
        if _CHECKSUMS in extra:
            raise ValueError(f"extra may not use the reserved key {_CHECKSUMS!r}")
        try:
            extra_text = json.dumps(extra, allow_nan=True)
        except (TypeError, ValueError) as e:  # fail here, not in the background writer
            raise TypeError(f"extra is not JSON-serializable: {e}") from e
        best_metrics = self._best_metrics(step, metrics)
        self.wait()  # the previous save's error surfaces here, before a new one starts
        self._delete_bad_steps()
        latest = self.latest_step()
        if latest is not None and step <= latest:
            raise StepNotAboveLatestError(
                f"{self.directory}: asked to save step {step}, but step {latest} is already saved; "
                f"steps must increase")
        checksums = {"arrays": tree_checksums(state), "extra": _json_digest(json.loads(extra_text))}
        stored = {**extra, _CHECKSUMS: checksums}
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardSave(state), _EXTRA: ocp.args.JsonSave(stored)})
        with jax.transfer_guard("allow"):  # checkpointing is a deliberate device->host copy
            saved = self._manager.save(step, args=args, metrics=best_metrics, force=True)
        if not saved:  # force=True always saves or raises; guard the contract anyway
            raise RuntimeError(f"{self.directory}: Orbax declined to save step {step}")
        return True

    def _best_metrics(self, step: int, metrics: dict | None) -> dict | None:
        if not self.best_k or metrics is None:
            return None
        if self.best_metric not in metrics:
            raise KeyError(f"save(step={step}): metrics lack best_metric {self.best_metric!r}; "
                           f"have {sorted(metrics)}")
        out = {}
        for k, v in metrics.items():
            try:
                out[k] = float(v)
            except (TypeError, ValueError):
                continue  # only scalars are ranked or kept
        if not math.isfinite(out[self.best_metric]):
            log.warning("checkpoint step %d: %s=%s is not finite; saved, but not a best-k candidate",
                        step, self.best_metric, out[self.best_metric])
            return None
        return out

    def _delete_bad_steps(self) -> None:
        """Removes the unreadable steps newer than the one resumed from, once training has come
        back to save again (so a resumed run can write those step numbers anew)."""
        for s in sorted(self._bad_steps):
            if s in self._manager.all_steps():
                log.warning("%s: deleting unreadable checkpoint step %d", self.directory, s)
                self._manager.delete(s)  # collective; Orbax deletes on the primary and syncs
        self._bad_steps.clear()

    # ---------------------------------------------------------------- restore

    def restore_latest(self, abstract_state: Any) -> Restored | None:
        """Restores the newest readable checkpoint into `abstract_state` (a pytree of
        jax.ShapeDtypeStruct, each with the target `.sharding`; jax.Arrays also work): the arrays
        land directly in those shardings, so a checkpoint from another mesh needs no conversion.

        A corrupt or partial newest step (unreadable data, missing metadata) is logged as a
        warning naming it, and the previous one is tried; the skipped steps are deleted at the
        next save. A tree or shape that does not match raises CheckpointMismatchError.
        Returns None only when the directory holds no checkpoint; raises NoReadableCheckpointError
        when checkpoints exist but none can be read.
        """
        target = _as_target(abstract_state)
        _quiet_abandoned_reads()
        self.wait()
        self._manager.reload()  # see steps written since this object was made (e.g. by a trainer)
        steps = sorted(self._manager.all_steps(), reverse=True)
        if not steps:
            return None
        failures: list[tuple[int, str]] = []
        for step in steps:
            try:
                state, extra = self._restore_step(step, target)
            except _Unreadable as e:
                failures.append((step, str(e)))
                continue
            if failures:  # one line for the whole fallback
                self._bad_steps.update(s for s, _ in failures)
                log.warning("%s: %s; using step %d instead (the unreadable step%s deleted at the next "
                            "save)", self.directory, _unreadable_list(failures), step,
                            " is" if len(failures) == 1 else "s are")
            return Restored(step, state, extra)
        raise NoReadableCheckpointError(_failure_report(self.directory, failures))

    def restore_best(self, abstract_state: Any) -> Restored | None:
        """Restores the best readable checkpoint by `best_metric` (ties: the newer), like
        `restore_latest`; an unreadable one is skipped with a warning. None when no checkpoint
        has the metric."""
        if not self.best_k:
            raise ValueError(f"{self.directory}: best_k=0, this Checkpointer keeps no best checkpoints")
        target = _as_target(abstract_state)
        _quiet_abandoned_reads()
        self.wait()
        self._manager.reload()  # see steps written since this object was made (e.g. by a trainer)
        ranked = []
        for step in self._manager.all_steps():
            if step in self._bad_steps:
                continue
            try:
                metrics = self._manager.metrics(step)
            except Exception as e:  # a broken metrics file: not a candidate
                log.warning("%s: checkpoint step %d: metrics unreadable (%s)", self.directory, step, e)
                continue
            if metrics and self.best_metric in metrics:
                value = float(metrics[self.best_metric])
                ranked.append(((value if self.best_mode == "min" else -value), -step, step))
        failures: list[tuple[int, str]] = []
        for _, _, step in sorted(ranked):
            try:
                state, extra = self._restore_step(step, target)
            except _Unreadable as e:
                failures.append((step, str(e)))
                continue
            if failures:
                log.warning("%s: best %s; using the next best, step %d", self.directory,
                            _unreadable_list(failures), step)
            return Restored(step, state, extra)
        if failures:
            raise NoReadableCheckpointError(_failure_report(self.directory, failures))
        return None

    def _restore_step(self, step: int, target: Any) -> tuple[Any, dict]:
        self._check_matches(step, target)
        args = ocp.args.Composite(**{_STATE: ocp.args.StandardRestore(target), _EXTRA: ocp.args.JsonRestore()})
        try:
            with jax.transfer_guard("allow"):
                restored = self._manager.restore(step, args=args)
        except Exception as e:  # the tree was checked above: this is the data
            raise _Unreadable(f"{type(e).__name__}: {_first_line(e)}") from e
        state, extra = restored[_STATE], restored[_EXTRA]
        if not isinstance(extra, dict):
            raise _Unreadable(f"extra is {type(extra).__name__}, not a JSON dict")
        # Orbax can quietly hand back something else than asked (e.g. raw uint32 key data when
        # the array metadata is gone): check every leaf against the target.
        got = jax.tree_util.tree_flatten_with_path(state)[0]
        want = jax.tree_util.tree_flatten_with_path(target)[0]
        if len(got) != len(want):
            raise _Unreadable(f"restored {len(got)} arrays, expected {len(want)}")
        for (path, a), (_, t) in zip(got, want):
            if not isinstance(a, jax.Array) or a.shape != t.shape or a.dtype != t.dtype:
                raise _Unreadable(f"{_path_str(path)} restored as {type(a).__name__} "
                                  f"{getattr(a, 'dtype', '?')}{list(getattr(a, 'shape', ()))}, "
                                  f"expected {t.dtype}{list(t.shape)}")
            if not a.sharding.is_equivalent_to(t.sharding, a.ndim):
                raise _Unreadable(f"{_path_str(path)} restored with sharding {a.sharding}, expected {t.sharding}")
        extra = dict(extra)
        self._verify(step, state, extra, extra.pop(_CHECKSUMS, None))
        return state, extra

    def _verify(self, step: int, state: Any, extra: dict, checksums: Any) -> None:
        """Recomputes the checksums saved with `step`; a difference means changed bytes on disk."""
        if checksums is None:
            log.warning("%s: checkpoint step %d has no checksums (written before they were recorded); "
                        "its bytes are not verified", self.directory, step)
            return
        if not isinstance(checksums, dict) or not isinstance(checksums.get("arrays"), dict):
            raise _Unreadable("its checksum record is malformed")
        saved, read = checksums["arrays"], tree_checksums(state)
        bad = [k for k in read if saved.get(k) != read[k]]
        if bad:
            more = f" (and {len(bad) - 1} more array{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
            raise _Unreadable(f"array {bad[0]} does not match the checksum saved with it{more}")
        if checksums.get("extra") != _json_digest(extra):
            raise _Unreadable("its extra JSON does not match the checksum saved with it")

    def _check_matches(self, step: int, target: Any) -> None:
        """Compares the target tree with the step's saved metadata: unreadable metadata means a
        broken checkpoint (try an older one); a different tree means the wrong run (raise)."""
        try:
            metadata = self._manager.item_metadata(step)
            tree = metadata[_STATE].tree if metadata is not None and metadata[_STATE] is not None else None
        except Exception as e:
            raise _Unreadable(f"metadata unreadable: {type(e).__name__}: {_first_line(e)}") from e
        if tree is None:
            raise _Unreadable("state metadata missing")
        saved = {_key_str(k): v for k, v in ocp.tree.to_flat_dict(tree).items()}
        wanted = {_key_str(k): _stored_form(v) for k, v in ocp.tree.to_flat_dict(target).items()}
        missing = sorted(set(wanted) - set(saved))
        unexpected = sorted(set(saved) - set(wanted))
        different = []
        for k in sorted(set(saved) & set(wanted)):
            s, w = saved[k], wanted[k]
            s_shape, s_dtype = tuple(getattr(s, "shape", ()) or ()), getattr(s, "dtype", None)
            if s_shape != tuple(w.shape) or (s_dtype is not None and np.dtype(s_dtype) != np.dtype(w.dtype)):
                different.append(f"{k}: saved {s_dtype}{list(s_shape)}, target {w.dtype}{list(w.shape)}")
        if missing or unexpected or different:
            parts = []
            if missing:
                parts.append(f"in the target but not the checkpoint: {_some(missing)}")
            if unexpected:
                parts.append(f"in the checkpoint but not the target: {_some(unexpected)}")
            if different:
                parts.append(f"shape/dtype differ: {_some(different)}")
            raise CheckpointMismatchError(
                f"{self.directory}: checkpoint step {step} does not match the state to restore into; "
                + "; ".join(parts) + ". Refusing to restore (and not starting from scratch); "
                "use another directory or the config that wrote it")

    # ---------------------------------------------------------------- lifetime

    def wait(self) -> None:
        """Blocks until the async save in flight is written; raises its error, if any."""
        self._manager.wait_until_finished()

    def last_committed_step(self) -> int | None:
        """Waits for the save in flight to commit, then returns the newest committed step (None:
        none). For a loop about to stop on an error: a failed commit is logged, not raised (the
        error being handled matters more), and its step is not reported."""
        try:
            self.wait()
        except Exception as e:  # noqa: BLE001 - reported, and the step is left out below
            log.warning("%s: the checkpoint save in flight failed: %s: %s", self.directory,
                        type(e).__name__, _first_line(e))
        self._manager.reload()
        return self.latest_step()

    def close(self) -> None:
        """Waits for the save in flight (raising its error) and releases Orbax's resources."""
        self._manager.close()

    def __enter__(self) -> Checkpointer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _as_target(abstract_state: Any) -> Any:
    """ShapeDtypeStructs with shardings; without one Orbax would restore the saved layout."""
    unsharded: list[str] = []

    def leaf(path, x):
        if isinstance(x, jax.Array):
            return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
        if isinstance(x, jax.ShapeDtypeStruct):
            if x.sharding is None:
                unsharded.append(_path_str(path))
            return x
        raise TypeError(f"abstract_state leaf {_path_str(path)} is a {type(x).__name__}; expected "
                        f"jax.ShapeDtypeStruct (with .sharding) or jax.Array")

    target = jax.tree_util.tree_map_with_path(leaf, abstract_state)
    if unsharded:
        raise ValueError(f"abstract_state leaves without a sharding: {_some(unsharded)}; give every "
                         f"jax.ShapeDtypeStruct its target NamedSharding (restoring the saved layout "
                         f"can run out of memory and lands on the wrong mesh)")
    return target


def _stored_form(x: jax.ShapeDtypeStruct) -> jax.ShapeDtypeStruct:
    """How a leaf looks on disk: typed PRNG keys are stored as their raw key data."""
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
        return jax.eval_shape(jax.random.key_data, x)
    return x


def _key_str(key: tuple) -> str:
    return "/".join(str(k) for k in key)


def _some(items: list[str], n: int = 8) -> str:
    return ", ".join(items[:n]) + (f" (+{len(items) - n} more)" if len(items) > n else "")


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    text = text.split(" See full TensorStore details:")[0]  # then a repr of the spec, no use in one line
    return (text.splitlines()[0] if text else "")[:300]


def _quiet_abandoned_reads() -> None:
    """Keeps a failed restore to its one warning. When one array of a step cannot be read, Orbax's
    `asyncio_utils.run_sync` raises and closes its event loop while TensorStore still reads the
    other arrays; each read that completes later calls `loop.call_soon_threadsafe` on the closed
    loop from a TensorStore thread, and CPython reports every one as an unraisable
    `RuntimeError('Event loop is closed')` with a traceback: thousands of lines for a real model,
    about a result nobody waits for. This `sys.unraisablehook` drops exactly those (counted in
    `ABANDONED_READS`) and hands everything else to the previous hook. Installed once."""
    if getattr(sys.unraisablehook, "_drops_abandoned_reads", False):
        return
    previous = sys.unraisablehook

    def hook(unraisable) -> None:
        if (unraisable.exc_type is RuntimeError and str(unraisable.exc_value) == "Event loop is closed"
                and unraisable.object is None
                and any(f.name == "call_soon_threadsafe" for f in traceback.extract_tb(unraisable.exc_traceback))):
            ABANDONED_READS[0] += 1
            return
        previous(unraisable)

    hook._drops_abandoned_reads = True
    sys.unraisablehook = hook


ABANDONED_READS = [0]  # reads of failed restores that finished after their event loop closed


def _json_digest(value: Any) -> str:
    """SHA-256 of a JSON value in canonical form (sorted keys), as 16 hex digits."""
    text = json.dumps(value, sort_keys=True, allow_nan=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _unreadable_list(failures: list[tuple[int, str]]) -> str:
    return "; ".join(f"checkpoint step {s} is unreadable ({why})" for s, why in failures)


def _failure_report(directory: str, failures: list[tuple[int, str]]) -> str:
    lines = "; ".join(f"step {s}: {why}" for s, why in failures)
    return (f"{directory}: {len(failures)} checkpoint(s) found, none readable ({lines}). Not starting "
            f"from scratch: fix or move the directory")
