"""PreemptionGuard: signals only set a flag, handlers are put back, multi-host defers to JAX's sync point."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from jax.experimental import multihost_utils

import scaling_jax.preemption as preemption
from scaling_jax.preemption import PreemptionGuard


def _deliver(sig: int, guard: PreemptionGuard) -> None:
    os.kill(os.getpid(), sig)
    deadline = time.monotonic() + 5  # Python runs the handler at the next bytecode boundary
    while not guard.stop_requested and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.fixture
def sentinel_handlers():
    """Known previous handlers, so the test can see that they come back."""
    calls = []
    def previous(signum, frame):
        calls.append(signum)
    saved = {s: signal.signal(s, previous) for s in (signal.SIGTERM, signal.SIGINT)}
    yield previous, calls
    for s, h in saved.items():
        signal.signal(s, h)


def test_sigterm_sets_the_flag_and_the_previous_handler_is_restored(sentinel_handlers):
    previous, calls = sentinel_handlers
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGTERM) is not previous
        assert not guard.should_stop(1)
        _deliver(signal.SIGTERM, guard)
        assert guard.stop_requested and guard.should_stop(2)
        assert guard.signal_received == signal.SIGTERM
    assert calls == []  # the guard took the signal; the process was not terminated
    assert signal.getsignal(signal.SIGTERM) is previous
    assert signal.getsignal(signal.SIGINT) is previous


def test_handlers_are_restored_when_the_body_raises(sentinel_handlers):
    previous, _ = sentinel_handlers
    with pytest.raises(RuntimeError, match="boom"):
        with PreemptionGuard():
            raise RuntimeError("boom")
    assert signal.getsignal(signal.SIGTERM) is previous


def test_first_sigint_requests_a_stop_and_a_second_one_interrupts(sentinel_handlers):
    with PreemptionGuard() as guard:
        _deliver(signal.SIGINT, guard)
        assert guard.should_stop(1)
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(1)  # interrupted by the handler long before this returns


def test_the_guard_refuses_a_non_main_thread():
    errors = []
    def enter():
        try:
            with PreemptionGuard():
                pass
        except RuntimeError as e:
            errors.append(str(e))
    t = threading.Thread(target=enter)
    t.start()
    t.join()
    assert errors and "main thread" in errors[0]


def test_multi_host_stops_at_jaxs_preemption_sync_point_and_leaves_sigterm_to_jax(sentinel_handlers, monkeypatch):
    previous, _ = sentinel_handlers
    monkeypatch.setattr(preemption.jax.distributed, "is_initialized", lambda: True)
    asked = []
    def sync_point(step):
        asked.append(step)
        return step == 7  # JAX agrees on step 7 for every process
    monkeypatch.setattr(multihost_utils, "reached_preemption_sync_point", sync_point)
    with PreemptionGuard() as guard:
        assert signal.getsignal(signal.SIGTERM) is previous  # JAX's notifier owns SIGTERM
        assert signal.getsignal(signal.SIGINT) is not previous
        assert [guard.should_stop(s) for s in (5, 6, 7)] == [False, False, True]
    assert asked == [5, 6, 7]
    assert signal.getsignal(signal.SIGINT) is previous


_CHILD = r"""
import os, signal, socket, sys, time
import jax
s = socket.socket(); s.bind(("127.0.0.1", 0)); port = s.getsockname()[1]; s.close()
jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=1, process_id=0,
                           initialization_timeout=60)
from scaling_jax.preemption import PreemptionGuard
with PreemptionGuard() as guard:
    for step in range(1, 1000):
        if step == 3:
            os.kill(os.getpid(), getattr(signal, sys.argv[1]))
        if guard.should_stop(step):
            print("stopped", step, flush=True)
            break
        time.sleep(0.01)
    else:
        print("never stopped", flush=True)
jax.distributed.shutdown()
"""


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_with_jax_distributed_a_signal_reaches_the_preemption_sync_point(sig):
    # A real (one-process) jax.distributed run: JAX's notifier must still own SIGTERM under the
    # guard, and a SIGINT is handed to it, so should_stop turns True via the sync point.
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    env.pop("XLA_FLAGS", None)
    out = subprocess.run([sys.executable, "-c", _CHILD, sig], env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.startswith("stopped "), out.stdout + out.stderr[-2000:]
