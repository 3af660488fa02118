"""Stop requests: SIGTERM/SIGINT set a flag; on multi-host, JAX's preemption sync point picks one step for all."""
from __future__ import annotations

import logging
import os
import signal
import threading
from types import FrameType

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)

# The exit status of a run that a stop signal ended after saving: EX_TEMPFAIL of sysexits.h
# ("temporary failure; the user is invited to retry"), so a scheduler or script can tell a
# preempted run (rerun it to resume) from a finished one (0) and a failed one (1, 2).
EXIT_PREEMPTED = 75


class PreemptionGuard:
    """Context manager: while active, SIGTERM and SIGINT only request a stop; the loop asks
    `should_stop(step)` once per step and saves a checkpoint before leaving. The previous
    handlers are restored on exit.

    Single process (jax.distributed not initialised): a signal sets a flag, nothing else happens
    in the handler; `should_stop` returns the flag. A second SIGINT raises KeyboardInterrupt, so
    a run stuck elsewhere can still be interrupted.

    Multi-host (jax.distributed initialised with the preemption service, JAX's default): JAX's
    own notifier owns SIGTERM (installed by `jax.distributed.initialize`; enter this guard after
    that), and `should_stop(step)` is `multihost_utils.reached_preemption_sync_point(step)`,
    which turns True at the same step on every process (a few steps after the signal: JAX's
    notifier polls once a second). Every process must call it at every step, starting from the
    same step. A SIGINT on any process is forwarded as SIGTERM to itself
    so that it takes the same coordinated path.
    """

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)):
        self.signals = tuple(signals)
        self.signal_received: int | None = None  # the first stop signal, for the log
        self._requested = False
        self._sigints = 0
        self._previous: dict[int, object] = {}
        self._use_jax_sync = False

    @property
    def stop_requested(self) -> bool:
        """Whether this process received a stop signal (local; not agreed across hosts)."""
        return self._requested

    def should_stop(self, step: int) -> bool:
        """True when the loop should save at `step` and stop; the same step on every process."""
        if self._use_jax_sync:
            return multihost_utils.reached_preemption_sync_point(step)
        return self._requested

    def __enter__(self) -> PreemptionGuard:
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("PreemptionGuard must be entered in the main thread (Python delivers "
                               "signals only there)")
        if self._previous:
            raise RuntimeError("PreemptionGuard is already active")
        distributed = jax.distributed.is_initialized()
        self._use_jax_sync = distributed and bool(jax.config.jax_enable_preemption_service)
        if distributed and not self._use_jax_sync:
            log.warning("jax.distributed is initialised with jax_enable_preemption_service=False: a stop "
                        "signal is only seen by the process that gets it, and processes may stop at "
                        "different steps (and hang); enable the preemption service for multi-host runs")
        self._requested, self.signal_received, self._sigints = False, None, 0
        for sig in self.signals:
            if sig == signal.SIGTERM and self._use_jax_sync:
                continue  # JAX's preemption notifier handles SIGTERM; replacing it would blind it
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in reversed(self._previous.items()):
            if previous is None:  # installed outside Python: cannot be put back from here
                log.warning("signal %s had a non-Python handler before PreemptionGuard; restoring the "
                            "default", signal.Signals(sig).name)
                previous = signal.SIG_DFL
            signal.signal(sig, previous)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        # Only set a flag here (the loop does the work); the exceptions are the escape hatch for
        # a second Ctrl-C and the hand-off of SIGINT to JAX's SIGTERM notifier on multi-host.
        if signum == signal.SIGINT:
            self._sigints += 1
            if self._sigints > 1:
                raise KeyboardInterrupt
        if self.signal_received is None:
            self.signal_received = signum
        self._requested = True
        if self._use_jax_sync and signum != signal.SIGTERM:
            # JAX's C++ handler (invisible to signal.getsignal) takes it from here. Were it gone,
            # SIGTERM's default would end the process: what this SIGINT did before the guard.
            os.kill(os.getpid(), signal.SIGTERM)
