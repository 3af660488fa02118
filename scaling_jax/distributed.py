"""Multi-process start-up: `jax.distributed` from explicit settings or the launcher's environment.

Resolution, field by field (coordinator, process count, process id, local device ids):
  1. explicit arguments to `initialize`;
  2. our generic variables, set by `launch/local.sh`, the SLURM script and the K8s manifests:
     `SCALING_JAX_COORDINATOR` (host:port), `SCALING_JAX_NUM_PROCESSES`, `SCALING_JAX_PROCESS_ID`,
     `SCALING_JAX_LOCAL_DEVICE_IDS` ("0,1,2,3");
  3. Kubernetes indexed Job / JobSet: the process id is `JOB_COMPLETION_INDEX`, plus
     `SCALING_JAX_JOB_INDEX * SCALING_JAX_PROCESSES_PER_JOB` when a JobSet runs several Jobs;
  4. what jax's own cluster plugins detect (`jax._src.clusters`, 0.10: ompi, slurm, mpi4py
     (opt-in), gketpu, gcetpu, k8s): SLURM (`SLURM_JOB_ID`, `SLURM_STEP_NODELIST`, `SLURM_NTASKS`,
     `SLURM_PROCID`, `SLURM_LOCALID`, i.e. inside `srun`) and Cloud TPU (GCE metadata or GKE's
     `TPU_WORKER_HOSTNAMES`) need no variables of ours.
Nothing found (no arguments, no variables, no cluster) means one process: `initialize` is a no-op.

Timeouts (all seconds, each an argument or a `SCALING_JAX_*` variable) bound every wait:
`jax.distributed.initialize` waits 300 s by default for peers; a peer that stops sending heartbeats
for `heartbeat_timeout_s` is declared dead and the coordination service then terminates the others
(XLA aborts the process: exit status 134, "JAX distributed service detected fatal errors");
`barrier` waits at most `timeout_s`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import sys
from collections.abc import Mapping, Sequence

import jax

from scaling_jax.errors import ConfigError

logger = logging.getLogger(__name__)

ENV_COORDINATOR = "SCALING_JAX_COORDINATOR"
ENV_NUM_PROCESSES = "SCALING_JAX_NUM_PROCESSES"
ENV_PROCESS_ID = "SCALING_JAX_PROCESS_ID"
ENV_LOCAL_DEVICE_IDS = "SCALING_JAX_LOCAL_DEVICE_IDS"
ENV_INIT_TIMEOUT_S = "SCALING_JAX_INIT_TIMEOUT_S"
ENV_HEARTBEAT_TIMEOUT_S = "SCALING_JAX_HEARTBEAT_TIMEOUT_S"
ENV_SHUTDOWN_TIMEOUT_S = "SCALING_JAX_SHUTDOWN_TIMEOUT_S"
ENV_BARRIER_TIMEOUT_S = "SCALING_JAX_BARRIER_TIMEOUT_S"
# Kubernetes: set by the Job controller for `completionMode: Indexed` pods.
ENV_JOB_COMPLETION_INDEX = "JOB_COMPLETION_INDEX"
# JobSet with several Jobs per replicatedJob: the Job's index (downward API from the pod label
# `jobset.sigs.k8s.io/job-index`) and the pods per Job (the Job's parallelism).
ENV_JOB_INDEX = "SCALING_JAX_JOB_INDEX"
ENV_PROCESSES_PER_JOB = "SCALING_JAX_PROCESSES_PER_JOB"

# jax's defaults (jax/_src/distributed.py, 0.10.2): 300 s init, 100 s heartbeat, 300 s shutdown.
DEFAULT_INIT_TIMEOUT_S = 300
DEFAULT_HEARTBEAT_TIMEOUT_S = 100
DEFAULT_SHUTDOWN_TIMEOUT_S = 300
DEFAULT_BARRIER_TIMEOUT_S = 600


@dataclasses.dataclass(frozen=True)
class LaunchSpec:
    """What `initialize` will pass to `jax.distributed.initialize`; None fields are left to jax.

    `source` names where the settings came from: "single" (no-op), "explicit", "env" (our
    variables), "k8s" (indexed Job / JobSet), "slurm", "tpu".
    """

    source: str
    coordinator: str | None = None
    num_processes: int | None = None
    process_id: int | None = None
    local_device_ids: tuple[int, ...] | None = None
    # jax's `cluster_detection_method`: "deactivate" when we resolved everything ourselves, the
    # plugin name ("slurm", ...) when jax fills the rest, None to let jax try each plugin.
    cluster_detection_method: str | None = None

    @property
    def is_single_process(self) -> bool:
        return self.source == "single"


@dataclasses.dataclass(frozen=True)
class Topology:
    """The process layout after start-up (what every log line and checkpoint path can rely on)."""

    process_index: int
    process_count: int
    local_device_count: int
    global_device_count: int
    platform: str
    source: str
    coordinator: str | None

    @property
    def is_main_process(self) -> bool:
        return self.process_index == 0


def _int_env(environ: Mapping[str, str], name: str) -> int | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not an integer") from None


def _ids_env(environ: Mapping[str, str], name: str) -> tuple[int, ...] | None:
    value = environ.get(name, "").strip()
    if not value:
        return None
    try:
        return tuple(int(part) for part in value.split(",") if part.strip())
    except ValueError:
        raise ConfigError(f"{name}={value!r} is not a comma-separated list of integers") from None


def _slurm_present(environ: Mapping[str, str]) -> bool:
    # The same test as jax's SlurmCluster.is_env_present: variables that exist inside `srun` only.
    keys = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID")
    return all(key in environ for key in keys)


def _tpu_present(environ: Mapping[str, str]) -> bool:
    """A Cloud TPU VM (jax sets the flag at import when libtpu finds TPU chips) or a GKE TPU pod."""
    if "TPU_WORKER_HOSTNAMES" in environ or "TPU_PROCESS_ADDRESSES" in environ:
        return True
    try:  # private, but it is what jax's own GceTpuCluster/GkeTpuCluster check first
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def detect_launch(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    on_cloud_tpu: bool | None = None,
) -> LaunchSpec:
    """Resolves the start-up settings without touching jax's runtime (pure; unit-testable).

    Raises ValueError when the settings are partial and no cluster can supply the rest, e.g.
    `SCALING_JAX_COORDINATOR` without a process count, or a process id outside the count.
    """
    environ = os.environ if environ is None else environ
    source = "explicit" if any(v is not None for v in (coordinator, num_processes, process_id)) \
        else "env"
    coordinator = coordinator or environ.get(ENV_COORDINATOR) or None
    if num_processes is None:
        num_processes = _int_env(environ, ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _int_env(environ, ENV_PROCESS_ID)
    # A completion index alone is any indexed Job (e.g. independent sweep members), not a
    # jax.distributed job: it counts only next to a coordinator or a process count.
    if (process_id is None and ENV_JOB_COMPLETION_INDEX in environ
            and (coordinator is not None or num_processes is not None)):
        job_index = _int_env(environ, ENV_JOB_INDEX) or 0
        per_job = _int_env(environ, ENV_PROCESSES_PER_JOB)
        if job_index and per_job is None:
            raise ConfigError(f"{ENV_JOB_INDEX}={job_index} needs {ENV_PROCESSES_PER_JOB}")
        process_id = job_index * (per_job or 0) + _int_env(environ, ENV_JOB_COMPLETION_INDEX)
        source = "explicit" if source == "explicit" else "k8s"
    if local_device_ids is None:
        local_device_ids = _ids_env(environ, ENV_LOCAL_DEVICE_IDS)
    local_ids = tuple(int(i) for i in local_device_ids) if local_device_ids is not None else None

    resolved = (coordinator, num_processes, process_id)
    if all(v is not None for v in resolved):
        if not 0 <= process_id < num_processes:
            raise ConfigError(f"process id {process_id} is outside [0, {num_processes})")
        if num_processes == 1:
            return LaunchSpec("single", coordinator, 1, 0, local_ids)
        return LaunchSpec(source, coordinator, num_processes, process_id, local_ids, "deactivate")

    if _slurm_present(environ):
        if _int_env(environ, "SLURM_NTASKS") == 1 and num_processes in (None, 1):
            return LaunchSpec("single", local_device_ids=local_ids)
        return LaunchSpec("slurm", coordinator, num_processes, process_id, local_ids, "slurm")
    tpu = _tpu_present(environ) if on_cloud_tpu is None else on_cloud_tpu
    if tpu:
        # jax picks gketpu or gcetpu itself (the GCE one asks the metadata server).
        return LaunchSpec("tpu", coordinator, num_processes, process_id, local_ids, None)
    if any(v is not None for v in resolved):
        names = (ENV_COORDINATOR, ENV_NUM_PROCESSES,
                 f"{ENV_PROCESS_ID} (or {ENV_JOB_COMPLETION_INDEX})")
        missing = [n for n, v in zip(names, resolved) if v is None]
        raise ConfigError(f"distributed settings are partial and no cluster was detected; "
                         f"missing: {', '.join(missing)}")
    return LaunchSpec("single", local_device_ids=local_ids)


def _seconds(value: float | None, environ: Mapping[str, str], name: str, default: float) -> float:
    """A timeout: the argument, else the variable `name`, else `default`; must be positive."""
    if value is None:
        text = environ.get(name, "").strip()
        try:
            value = float(text) if text else default
        except ValueError:
            raise ConfigError(f"{name}={text!r} is not a number of seconds") from None
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {value}")
    return float(value)


_topology: Topology | None = None  # set once by `initialize`


def initialize(
    coordinator: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    local_device_ids: Sequence[int] | None = None,
    timeout_s: float | None = None,
    heartbeat_timeout_s: float | None = None,
    shutdown_timeout_s: float | None = None,
    fail_fast: bool = True,
) -> Topology:
    """Joins this process to the others (see the module docstring) and returns the topology.

    Call it first, before any jax computation or `jax.devices()`. Calling it again returns the
    same topology. Timeouts default to `SCALING_JAX_{INIT,HEARTBEAT,SHUTDOWN}_TIMEOUT_S`, then to
    jax's defaults (300, 100, 300 s).

    `fail_fast` (multi-process only): an uncaught exception prints its traceback and ends the
    process at once (`abort`) instead of running jax's exit-time `distributed.shutdown()`, whose
    barrier would wait up to the shutdown timeout for peers that are themselves stuck waiting for
    this process in a collective. The launcher then sees the failure and stops the rest.
    """
    global _topology
    if _topology is not None:
        return _topology
    environ = os.environ
    spec = detect_launch(coordinator, num_processes, process_id, local_device_ids, environ=environ)
    if not spec.is_single_process and not jax.distributed.is_initialized():
        # jax takes whole seconds.
        init_s = math.ceil(_seconds(timeout_s, environ, ENV_INIT_TIMEOUT_S,
                                    DEFAULT_INIT_TIMEOUT_S))
        heartbeat_s = math.ceil(_seconds(heartbeat_timeout_s, environ, ENV_HEARTBEAT_TIMEOUT_S,
                                         DEFAULT_HEARTBEAT_TIMEOUT_S))
        shutdown_s = math.ceil(_seconds(shutdown_timeout_s, environ, ENV_SHUTDOWN_TIMEOUT_S,
                                        DEFAULT_SHUTDOWN_TIMEOUT_S))
        # Cross-process collectives on CPU need an implementation; gloo is jax 0.10's default,
        # older releases defaulted to none (then a CPU psum across processes fails to compile).
        if jax.config.jax_cpu_collectives_implementation is None:
            jax.config.update("jax_cpu_collectives_implementation", "gloo")
        logger.info("jax.distributed.initialize from %s: coordinator=%s num_processes=%s "
                    "process_id=%s local_device_ids=%s timeouts init/heartbeat/shutdown=%d/%d/%d s",
                    spec.source, spec.coordinator, spec.num_processes, spec.process_id,
                    spec.local_device_ids, init_s, heartbeat_s, shutdown_s)
        jax.distributed.initialize(
            coordinator_address=spec.coordinator,
            num_processes=spec.num_processes,
            process_id=spec.process_id,
            local_device_ids=list(spec.local_device_ids) if spec.local_device_ids else None,
            cluster_detection_method=spec.cluster_detection_method,
            initialization_timeout=init_s,
            heartbeat_timeout_seconds=heartbeat_s,
            shutdown_timeout_seconds=shutdown_s,
        )
    _topology = _make_topology(spec.source)
    if fail_fast and _topology.process_count > 1:
        _install_fail_fast_excepthook()
    logger.info("topology: process %d/%d, %d local / %d global %s devices (from %s)",
                _topology.process_index, _topology.process_count, _topology.local_device_count,
                _topology.global_device_count, _topology.platform, _topology.source)
    return _topology


def _make_topology(source: str) -> Topology:
    from jax._src import distributed as _jax_distributed  # the coordinator address jax used

    return Topology(
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        local_device_count=jax.local_device_count(),
        global_device_count=jax.device_count(),
        platform=jax.devices()[0].platform,
        source=source,
        coordinator=getattr(_jax_distributed.global_state, "coordinator_address", None),
    )


def is_main_process() -> bool:
    """True on process 0: the one that logs, writes metrics and exports."""
    return jax.process_index() == 0


def _client():
    """jax's coordination-service client, or None on one process (no public accessor in 0.10)."""
    from jax._src import distributed as _jax_distributed

    return _jax_distributed.global_state.client


def barrier(name: str, timeout_s: float | None = None) -> None:
    """Waits until every process reaches the barrier `name`, for at most `timeout_s` seconds.

    Uses the coordination service's `wait_at_barrier(name, timeout_in_ms)`:
    `multihost_utils.sync_global_devices` has no timeout and runs a device computation. A name
    may be reused (the service counts passes); every process must pass the same names in the same
    order. A no-op on one process. Raises TimeoutError naming the barrier when
    a peer does not arrive in time, RuntimeError when the service reports a failed peer.
    """
    client = _client()
    if client is None or jax.process_count() == 1:
        return
    seconds = _seconds(timeout_s, os.environ, ENV_BARRIER_TIMEOUT_S, DEFAULT_BARRIER_TIMEOUT_S)
    try:
        client.wait_at_barrier(name, max(1, round(seconds * 1000)))
    except jax.errors.JaxRuntimeError as error:
        message = str(error)
        if message.startswith("DEADLINE_EXCEEDED"):
            raise TimeoutError(f"barrier {name!r}: not every process arrived within {seconds} s "
                               f"({message.splitlines()[0]})") from error
        raise RuntimeError(f"barrier {name!r} failed: {message.splitlines()[0]}") from error


def abort(status: int = 1) -> None:
    """Ends this process now with `status`, skipping jax's exit-time shutdown barrier.

    For a failing process of a multi-process job: `sys.exit(status)` would first wait (up to the
    shutdown timeout) at that barrier for peers that never arrive. Flushes logs and std streams.
    """
    logging.shutdown()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):
            pass
    os._exit(status)


def _install_fail_fast_excepthook() -> None:
    previous = sys.excepthook

    def excepthook(exc_type, exc, traceback):
        previous(exc_type, exc, traceback)
        print(f"scaling_jax.distributed: process {jax.process_index()} failed; exiting without "
              "the shutdown barrier so the other processes and the launcher notice",
              file=sys.stderr)
        abort(1)

    sys.excepthook = excepthook
