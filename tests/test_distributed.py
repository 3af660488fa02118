"""scaling_jax.distributed: environment detection per launcher, the arguments handed to
jax.distributed.initialize, the single-process no-op, and a bounded wait for a missing peer."""

import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import pytest

from scaling_jax import distributed

REPO = Path(__file__).resolve().parents[1]

# Every variable the detection reads, cleared so the machine running the tests cannot leak in.
_ENV_KEYS = [
    distributed.ENV_COORDINATOR, distributed.ENV_NUM_PROCESSES, distributed.ENV_PROCESS_ID,
    distributed.ENV_LOCAL_DEVICE_IDS, distributed.ENV_INIT_TIMEOUT_S,
    distributed.ENV_HEARTBEAT_TIMEOUT_S, distributed.ENV_SHUTDOWN_TIMEOUT_S,
    distributed.ENV_BARRIER_TIMEOUT_S, distributed.ENV_JOB_COMPLETION_INDEX,
    distributed.ENV_JOB_INDEX, distributed.ENV_PROCESSES_PER_JOB,
    "SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID",
    "SLURM_STEP_NUM_NODES", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "TPU_WORKER_ID",
    "JAX_COORDINATOR_ADDRESS", "JAX_COORDINATOR_PORT", "JAX_LOCAL_DEVICE_IDS",
    "OMPI_MCA_orte_hnp_uri",
]

SLURM_ENV = {  # task 6 of `srun --nodes=2 --ntasks-per-node=4` on gpu[017-018]
    "SLURM_JOB_ID": "123456", "SLURM_STEP_NODELIST": "gpu[017-018]", "SLURM_NTASKS": "8",
    "SLURM_PROCID": "6", "SLURM_LOCALID": "2", "SLURM_STEP_NUM_NODES": "2",
}


@pytest.fixture
def clean_env(monkeypatch):
    for key in _ENV_KEYS:
        monkeypatch.delenv(key, raising=False)
    return monkeypatch


def detect(env, **kwargs):
    return distributed.detect_launch(environ=env, on_cloud_tpu=kwargs.pop("tpu", False), **kwargs)


def test_no_arguments_and_no_environment_is_a_single_process():
    spec = detect({})
    assert spec.is_single_process and spec.source == "single"
    assert (spec.coordinator, spec.num_processes, spec.process_id) == (None, None, None)


def test_local_sh_variables_give_every_setting_and_switch_jax_detection_off():
    env = {"SCALING_JAX_COORDINATOR": "127.0.0.1:4321", "SCALING_JAX_NUM_PROCESSES": "2",
           "SCALING_JAX_PROCESS_ID": "1"}
    spec = detect(env)
    assert spec == distributed.LaunchSpec("env", "127.0.0.1:4321", 2, 1, None, "deactivate")


def test_explicit_arguments_win_over_the_environment():
    env = {"SCALING_JAX_COORDINATOR": "127.0.0.1:4321", "SCALING_JAX_NUM_PROCESSES": "2",
           "SCALING_JAX_PROCESS_ID": "1", "SCALING_JAX_LOCAL_DEVICE_IDS": "0,1"}
    spec = detect(env, coordinator="10.0.0.1:99", num_processes=4, process_id=3,
                  local_device_ids=[5])
    assert spec == distributed.LaunchSpec("explicit", "10.0.0.1:99", 4, 3, (5,), "deactivate")


def test_local_device_ids_are_read_as_a_comma_list():
    env = {"SCALING_JAX_COORDINATOR": "h:1", "SCALING_JAX_NUM_PROCESSES": "2",
           "SCALING_JAX_PROCESS_ID": "0", "SCALING_JAX_LOCAL_DEVICE_IDS": "0,1,2,3"}
    assert detect(env).local_device_ids == (0, 1, 2, 3)


def test_kubernetes_indexed_job_takes_the_process_id_from_the_completion_index():
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "JOB_COMPLETION_INDEX": "3",
           "SCALING_JAX_COORDINATOR": "scaling-jax-0.scaling-jax:55527",
           "SCALING_JAX_NUM_PROCESSES": "4"}
    spec = detect(env)
    assert spec == distributed.LaunchSpec("k8s", "scaling-jax-0.scaling-jax:55527", 4, 3, None,
                                          "deactivate")


def test_completion_index_alone_is_an_ordinary_indexed_job_not_a_distributed_one():
    assert detect({"JOB_COMPLETION_INDEX": "3", "KUBERNETES_SERVICE_HOST": "10.0.0.1"}) \
        .is_single_process


def test_jobset_offsets_the_completion_index_by_the_job_index():
    env = {"JOB_COMPLETION_INDEX": "1", "SCALING_JAX_JOB_INDEX": "2",
           "SCALING_JAX_PROCESSES_PER_JOB": "4", "SCALING_JAX_NUM_PROCESSES": "12",
           "SCALING_JAX_COORDINATOR": "scaling-jax-workers-0-0.scaling-jax:55527"}
    spec = detect(env)
    assert (spec.source, spec.process_id, spec.num_processes) == ("k8s", 2 * 4 + 1, 12)


def test_jobset_job_index_without_processes_per_job_is_an_error():
    env = {"JOB_COMPLETION_INDEX": "1", "SCALING_JAX_JOB_INDEX": "2",
           "SCALING_JAX_NUM_PROCESSES": "12", "SCALING_JAX_COORDINATOR": "h:1"}
    with pytest.raises(ValueError, match="SCALING_JAX_PROCESSES_PER_JOB"):
        detect(env)


def test_slurm_is_left_to_jax_slurm_detection():
    spec = detect(SLURM_ENV)
    assert spec == distributed.LaunchSpec("slurm", None, None, None, None, "slurm")


def test_slurm_keeps_the_coordinator_and_device_ids_the_sbatch_script_sets():
    env = {**SLURM_ENV, "SCALING_JAX_COORDINATOR": "gpu017:62016",
           "SCALING_JAX_LOCAL_DEVICE_IDS": "0,1,2,3"}
    spec = detect(env)
    assert spec == distributed.LaunchSpec("slurm", "gpu017:62016", None, None, (0, 1, 2, 3),
                                          "slurm")


def test_slurm_with_one_task_is_a_single_process():
    assert detect({**SLURM_ENV, "SLURM_NTASKS": "1", "SLURM_PROCID": "0"}).is_single_process


def test_jax_slurm_plugin_reads_the_same_environment(clean_env):
    """What jax fills in for our "slurm" spec: first node, id, count, and one GPU per process."""
    from jax._src import clusters

    for key, value in SLURM_ENV.items():
        clean_env.setenv(key, value)
    coordinator, count, pid, local_ids = clusters.ClusterEnv.auto_detect_unset_distributed_params(
        None, None, None, None, "slurm", 10)
    assert coordinator == f"gpu017:{123456 % 4096 + 61440}"
    assert (count, pid, list(local_ids)) == (8, 6, [2])


def test_cloud_tpu_is_left_to_jax_tpu_detection():
    spec = detect({}, tpu=True)
    assert spec == distributed.LaunchSpec("tpu", None, None, None, None, None)


def test_gke_tpu_worker_hostnames_mean_tpu():
    env = {"TPU_WORKER_HOSTNAMES": "w0,w1", "TPU_WORKER_ID": "1"}
    spec = distributed.detect_launch(environ=env)
    assert spec.source == "tpu"


def test_partial_settings_without_a_cluster_name_what_is_missing():
    with pytest.raises(ValueError, match="SCALING_JAX_NUM_PROCESSES"):
        detect({"SCALING_JAX_COORDINATOR": "127.0.0.1:1", "SCALING_JAX_PROCESS_ID": "0"})


def test_process_id_outside_the_count_is_an_error():
    with pytest.raises(ValueError, match="outside"):
        detect({"SCALING_JAX_COORDINATOR": "h:1", "SCALING_JAX_NUM_PROCESSES": "2",
                "SCALING_JAX_PROCESS_ID": "2"})


def test_one_process_from_the_environment_is_a_single_process():
    env = {"SCALING_JAX_COORDINATOR": "h:1", "SCALING_JAX_NUM_PROCESSES": "1",
           "SCALING_JAX_PROCESS_ID": "0"}
    assert detect(env).is_single_process


def test_bad_integer_names_the_variable():
    with pytest.raises(ValueError, match="SCALING_JAX_NUM_PROCESSES"):
        detect({"SCALING_JAX_COORDINATOR": "h:1", "SCALING_JAX_NUM_PROCESSES": "two",
                "SCALING_JAX_PROCESS_ID": "0"})


def _forbid_jax_initialize(*args, **kwargs):
    raise AssertionError("jax.distributed.initialize must not be called")


def test_initialize_is_a_no_op_on_one_process(clean_env):
    clean_env.setattr(distributed, "_topology", None)
    clean_env.setattr(distributed, "_tpu_present", lambda environ: False)
    clean_env.setattr(jax.distributed, "initialize", _forbid_jax_initialize)
    topology = distributed.initialize()
    assert (topology.process_index, topology.process_count) == (0, 1)
    assert topology.global_device_count == topology.local_device_count == jax.device_count()
    assert topology.source == "single" and topology.is_main_process
    assert distributed.is_main_process()
    assert distributed.initialize() is topology  # a second call changes nothing
    distributed.barrier("single_process", timeout_s=1)  # no peers: returns at once


def test_initialize_hands_settings_and_timeouts_to_jax(clean_env):
    calls = []
    clean_env.setattr(distributed, "_topology", None)
    clean_env.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    clean_env.setattr(jax.distributed, "is_initialized", lambda: False)
    clean_env.setenv("SCALING_JAX_COORDINATOR", "127.0.0.1:4321")
    clean_env.setenv("SCALING_JAX_NUM_PROCESSES", "2")
    clean_env.setenv("SCALING_JAX_PROCESS_ID", "1")
    clean_env.setenv("SCALING_JAX_LOCAL_DEVICE_IDS", "0,1")
    clean_env.setenv("SCALING_JAX_HEARTBEAT_TIMEOUT_S", "7")
    distributed.initialize(timeout_s=11, shutdown_timeout_s=13)
    assert calls == [dict(
        coordinator_address="127.0.0.1:4321", num_processes=2, process_id=1,
        local_device_ids=[0, 1], cluster_detection_method="deactivate",
        initialization_timeout=11, heartbeat_timeout_seconds=7, shutdown_timeout_seconds=13)]


def test_initialize_defaults_to_jax_timeouts_and_lets_jax_read_slurm(clean_env):
    calls = []
    clean_env.setattr(distributed, "_topology", None)
    clean_env.setattr(jax.distributed, "initialize", lambda **kwargs: calls.append(kwargs))
    clean_env.setattr(jax.distributed, "is_initialized", lambda: False)
    for key, value in SLURM_ENV.items():
        clean_env.setenv(key, value)
    distributed.initialize()
    assert calls == [dict(
        coordinator_address=None, num_processes=None, process_id=None, local_device_ids=None,
        cluster_detection_method="slurm", initialization_timeout=300,
        heartbeat_timeout_seconds=100, shutdown_timeout_seconds=300)]


def test_timeout_variable_must_be_a_number(clean_env):
    clean_env.setattr(distributed, "_topology", None)
    clean_env.setattr(jax.distributed, "initialize", _forbid_jax_initialize)
    clean_env.setenv("SCALING_JAX_COORDINATOR", "127.0.0.1:4321")
    clean_env.setenv("SCALING_JAX_NUM_PROCESSES", "2")
    clean_env.setenv("SCALING_JAX_PROCESS_ID", "0")
    clean_env.setenv("SCALING_JAX_HEARTBEAT_TIMEOUT_S", "soon")
    with pytest.raises(ValueError, match="SCALING_JAX_HEARTBEAT_TIMEOUT_S"):
        distributed.initialize()


def test_non_positive_timeout_is_rejected(clean_env):
    clean_env.setattr(distributed, "_topology", None)
    clean_env.setattr(jax.distributed, "initialize", _forbid_jax_initialize)
    clean_env.setenv("SCALING_JAX_COORDINATOR", "127.0.0.1:4321")
    clean_env.setenv("SCALING_JAX_NUM_PROCESSES", "2")
    clean_env.setenv("SCALING_JAX_PROCESS_ID", "0")
    with pytest.raises(ValueError, match="SCALING_JAX_INIT_TIMEOUT_S"):
        distributed.initialize(timeout_s=0)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize("process_id", [0, 1], ids=["coordinator", "worker"])
def test_a_peer_that_never_shows_up_fails_initialize_within_the_timeout(tmp_path, process_id):
    """Process 0 (which hosts the coordinator) and process 1 (which dials it) both give up.

    jax 0.10 does not raise here: the coordination client aborts the process (SIGABRT) with
    DEADLINE_EXCEEDED. What matters is that the wait is bounded by the setting, not 300 s.
    """
    script = tmp_path / "lonely.py"
    script.write_text(textwrap.dedent("""
        from scaling_jax import distributed
        distributed.initialize()
        print("JOINED")
    """))
    env = {k: v for k, v in os.environ.items() if k not in _ENV_KEYS}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO), SCALING_JAX_NUM_PROCESSES="2",
               SCALING_JAX_COORDINATOR=f"127.0.0.1:{_free_port()}",
               SCALING_JAX_PROCESS_ID=str(process_id), SCALING_JAX_INIT_TIMEOUT_S="3")
    start = time.monotonic()
    result = subprocess.run([sys.executable, str(script)], env=env, capture_output=True,
                            text=True, timeout=120)
    elapsed = time.monotonic() - start
    assert result.returncode != 0 and "JOINED" not in result.stdout
    assert "DEADLINE_EXCEEDED" in result.stderr, result.stderr[-2000:]
    assert elapsed < 45, f"initialize took {elapsed:.0f} s with a 3 s timeout"
