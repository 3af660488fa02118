"""launch/: local.sh joins real processes (cross-process sum, a dying rank ends the job in bounded
time), the cluster scripts print the command they would run, the K8s manifests carry what
scaling_jax.distributed reads."""

import json
import os
import shlex
import signal
import subprocess
import textwrap
import time
from pathlib import Path

import pytest
import yaml

from scaling_jax import distributed

REPO = Path(__file__).resolve().parents[1]
LAUNCH = REPO / "launch"
SCRIPTS = ["local.sh", "slurm.sbatch", "slurm_sweep.sbatch", "tpu_pod.sh"]

# A tiny job: initialize from local.sh's variables, a jitted sum over the global mesh of
# 2 processes x 4 CPU devices, an allgather of ranks, a barrier, one JSON line per rank.
WORKER = textwrap.dedent("""
    import json, os, signal, sys, time
    from scaling_jax import distributed

    def emit(record):
        # One write, on a line of its own: gloo's C++ code prints "[Gloo] Rank 0 is connected to 1
        # peer ranks..." to the same stdout from another thread, and under PYTHONUNBUFFERED print()
        # writes the text and its newline separately, so that message once landed inside the line.
        sys.stdout.write("\\n" + json.dumps(record) + "\\n")

    mode = os.environ.get("WORKER_MODE", "ok")
    topology = distributed.initialize()
    import jax, jax.numpy as jnp, numpy as np
    from jax.experimental import multihost_utils
    from jax.sharding import NamedSharding, PartitionSpec as P

    rank = topology.process_index
    if mode == "raise" and rank == 1:
        raise RuntimeError("rank 1 fails")
    if mode == "exit1" and rank == 1:
        sys.exit(1)  # waits at jax's exit-time shutdown barrier: bounded by its timeout
    if mode == "sigkill" and rank == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    if mode == "late_barrier":
        if rank == 1:
            time.sleep(4)
        start = time.monotonic()
        try:
            distributed.barrier("late", timeout_s=1)
            outcome = "passed"
        except TimeoutError:
            outcome = "timeout"
        emit({"rank": rank, "barrier": outcome, "s": time.monotonic() - start})
        sys.exit(0)

    mesh = jax.make_mesh((jax.device_count(),), ("data",))
    values = np.arange(1, jax.device_count() + 1, dtype=np.float32)  # 1..8, one per device
    x = jax.make_array_from_callback(values.shape, NamedSharding(mesh, P("data")),
                                     lambda index: values[index])
    total = jax.jit(jnp.sum, out_shardings=NamedSharding(mesh, P()))(x)
    ranks = multihost_utils.process_allgather(jnp.int32(rank))
    distributed.barrier("before_print", timeout_s=60)
    emit({"rank": rank, "count": topology.process_count,
          "global": topology.global_device_count, "local": topology.local_device_count,
          "platform": topology.platform, "source": topology.source,
          "sum": float(total), "ranks": np.asarray(ranks).tolist(), "argv": sys.argv[1:]})
""")


def run_local(tmp_path, nproc, *args, env=None, timeout=120):
    """Runs launch/local.sh with the worker; on timeout stops it with SIGTERM (its trap then
    stops the ranks) and fails."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("SCALING_JAX_")}
    full_env.update(PYTHONPATH=str(REPO), SCALING_JAX_CMD=f"python {shlex.quote(str(script))}",
                    KILL_GRACE_S="3", **(env or {}))
    start = time.monotonic()
    proc = subprocess.Popen(["bash", str(LAUNCH / "local.sh"), str(nproc), *args], env=full_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
        pytest.fail(f"local.sh still running after {timeout} s\n{err[-3000:]}")
    return proc.returncode, out, err, time.monotonic() - start


def json_lines(out):
    """The worker's JSON lines: rank 0's unprefixed, the others' prefixed "[rank R] "."""
    records = []
    for line in out.splitlines():
        if line.startswith("[rank "):
            line = line.split("] ", 1)[1]
        if line.startswith("{"):
            records.append(json.loads(line))
    return sorted(records, key=lambda r: r["rank"])


@pytest.mark.parametrize("name", SCRIPTS)
def test_script_syntax_is_valid_bash(name):
    subprocess.run(["bash", "-n", str(LAUNCH / name)], check=True)
    assert os.access(LAUNCH / name, os.X_OK), f"{name} is not executable"


@pytest.mark.slow
def test_local_sh_two_processes_agree_on_a_cross_process_sum(tmp_path):
    rc, out, err, _ = run_local(tmp_path, 2, "configs/lm_tiny.yaml", "train.steps=3")
    assert rc == 0, err[-3000:]
    records = json_lines(out)
    assert [r["rank"] for r in records] == [0, 1], out
    for record in records:
        assert (record["count"], record["global"], record["local"]) == (2, 8, 4)
        assert record["platform"] == "cpu" and record["source"] == "env"
        assert record["sum"] == sum(range(1, 9))  # 36: every device's value, across processes
        assert record["ranks"] == [0, 1]
        assert record["argv"] == ["configs/lm_tiny.yaml", "train.steps=3"]
    assert any(line.startswith("[rank 1] {") for line in out.splitlines())  # prefixed rank 1
    assert any(line.startswith("{") for line in out.splitlines())  # rank 0 passes through


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["raise", "sigkill", "exit1"])
def test_local_sh_stops_everyone_when_a_rank_dies(tmp_path, mode):
    """Rank 1 fails right after initialize while rank 0 waits for it in a collective."""
    env = {"WORKER_MODE": mode, "SCALING_JAX_SHUTDOWN_TIMEOUT_S": "5"}
    rc, out, err, elapsed = run_local(tmp_path, 2, "cfg", env=env)
    assert rc != 0
    assert "exited with status" in err and "stopping the other ranks" in err, err[-3000:]
    assert elapsed < 60, f"local.sh took {elapsed:.0f} s to give up"
    if mode == "raise":  # the fail-fast hook skips the shutdown barrier
        assert "rank 1 exited with status 1" in err
        assert "exiting without the shutdown barrier" in err


@pytest.mark.slow
def test_barrier_gives_up_after_its_timeout(tmp_path):
    rc, out, err, _ = run_local(tmp_path, 2, "cfg", env={"WORKER_MODE": "late_barrier"})
    assert rc == 0, err[-3000:]
    rank0 = json_lines(out)[0]
    assert rank0["barrier"] == "timeout" and rank0["s"] < 3.5


def test_local_sh_without_arguments_prints_usage():
    result = subprocess.run(["bash", str(LAUNCH / "local.sh")], capture_output=True, text=True)
    assert result.returncode == 2 and "NPROC CONFIG" in result.stderr


def test_local_sh_rejects_a_bad_process_count():
    result = subprocess.run(["bash", str(LAUNCH / "local.sh"), "two", "cfg"],
                            capture_output=True, text=True)
    assert result.returncode == 2 and "NPROC" in result.stderr


FAKE_SLURM = {"SLURM_JOB_ID": "123456", "SLURM_JOB_NODELIST": "gpu[017-020]",
              "SLURM_JOB_NUM_NODES": "4", "SLURM_SUBMIT_DIR": str(REPO)}


def dry_run(script, *args, **env):
    base = {"PATH": os.environ["PATH"], "HOME": os.environ.get("HOME", "/tmp"), "DRY_RUN": "1"}
    result = subprocess.run(["bash", str(LAUNCH / script), *args], env={**base, **env},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return result.stdout, result.stderr


def test_slurm_dry_run_starts_one_process_per_gpu():
    out, err = dry_run("slurm.sbatch", "configs/lm_tiny.yaml", "train.steps=5", **FAKE_SLURM)
    *exports, command = out.strip().splitlines()
    env = dict(line.removeprefix("export ").split("=", 1) for line in exports)
    assert env["SCALING_JAX_COORDINATOR"] == f"gpu017:{123456 % 4096 + 61440}"
    assert env["NCCL_DEBUG"] == "WARN" and "XLA_PYTHON_CLIENT_MEM_FRACTION" in env
    argv = shlex.split(command)
    assert argv[0] == "srun" and "--nodes=4" in argv and "--ntasks-per-node=8" in argv
    assert argv[-4:] == ["scaling-jax", "train", "configs/lm_tiny.yaml", "train.steps=5"]
    assert "one process per GPU" in err


def test_slurm_dry_run_one_process_per_node_sets_visible_devices_and_says_so():
    out, err = dry_run("slurm.sbatch", "configs/lm_tiny.yaml", PROCS_PER="node", GPUS="4",
                       **FAKE_SLURM)
    *exports, command = out.strip().splitlines()
    env = {k: shlex.split(v)[0] for k, v in
           (line.removeprefix("export ").split("=", 1) for line in exports)}
    assert env["CUDA_VISIBLE_DEVICES"] == env["SCALING_JAX_LOCAL_DEVICE_IDS"] == "0,1,2,3"
    assert "--ntasks-per-node=1" in shlex.split(command)
    assert "one process per node" in err


def test_slurm_sweep_dry_run_passes_the_array_task_as_the_sweep_member():
    text = (LAUNCH / "slurm_sweep.sbatch").read_text()
    assert "#SBATCH --array=" in text
    out, _ = dry_run("slurm_sweep.sbatch", "configs/sweep_cpu.yaml", "train.seed=1",
                     SLURM_ARRAY_TASK_ID="3", **FAKE_SLURM)
    argv = shlex.split(out.strip().splitlines()[-1])
    assert argv[-5:] == ["scaling-jax", "sweep", "configs/sweep_cpu.yaml", "sweep.member=3",
                         "train.seed=1"]


def test_tpu_pod_dry_run_runs_on_every_worker():
    out, _ = dry_run("tpu_pod.sh", "my-tpu", "us-central2-b", "configs/lm_tiny.yaml",
                     "run.dir=gs://bucket/run 1")
    argv = shlex.split(out)
    assert argv[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "my-tpu"]
    assert argv[argv.index("--zone") + 1] == "us-central2-b" and "--worker=all" in argv
    remote = shlex.split(argv[argv.index("--command") + 1])
    assert remote[-4:] == ["scaling-jax", "train", "configs/lm_tiny.yaml",
                           "run.dir=gs://bucket/run 1"]
    assert not any(part.startswith("SCALING_JAX_COORDINATOR") for part in remote)


def test_tpu_pod_quotes_verb_remote_dir_and_timeouts_for_the_remote_shell():
    # Before, VERB, REMOTE_DIR and the timeouts went into the remote command as they were: a
    # space or a ';' in them ran something else on every worker.
    out, _ = dry_run("tpu_pod.sh", "t", "z", "c.yaml", VERB="train; touch /tmp/pwned",
                     REMOTE_DIR="/opt/my runs;x", SCALING_JAX_HEARTBEAT_TIMEOUT_S="90")
    argv = shlex.split(out)
    remote = shlex.split(argv[argv.index("--command") + 1])
    assert remote[:3] == ["cd", "/opt/my runs;x", "&&"]
    assert remote[-3:] == ["scaling-jax", "train; touch /tmp/pwned", "c.yaml"]  # one word: no such verb
    assert "SCALING_JAX_HEARTBEAT_TIMEOUT_S=90" in remote
    out, _ = dry_run("tpu_pod.sh", "t", "z", "c.yaml")  # the default stays ~-relative on the worker
    assert shlex.split(out)[-1].startswith("cd ~/scaling_jax && ")
    bad = subprocess.run(["bash", str(LAUNCH / "tpu_pod.sh"), "t", "z", "c.yaml"], capture_output=True, text=True,
                         env={"PATH": os.environ["PATH"], "DRY_RUN": "1", "SCALING_JAX_INIT_TIMEOUT_S": "5 && x"})
    assert bad.returncode == 2 and "SCALING_JAX_INIT_TIMEOUT_S must be a whole number" in bad.stderr


def _container_env(container, **field_values):
    """A container's env as the pod would see it, with downward-API fields given by name."""
    env = {}
    for item in container["env"]:
        if "value" in item:
            env[item["name"]] = item["value"]
        else:
            env[item["name"]] = field_values[item["valueFrom"]["fieldRef"]["fieldPath"]]
    return env


COMPLETION_INDEX = "metadata.annotations['batch.kubernetes.io/job-completion-index']"
JOB_INDEX = "metadata.labels['jobset.sigs.k8s.io/job-index']"


def test_indexed_job_manifest_has_a_headless_service_and_the_variables_we_read():
    docs = list(yaml.safe_load_all((LAUNCH / "k8s" / "indexed_job.yaml").read_text()))
    service = next(d for d in docs if d["kind"] == "Service")
    job = next(d for d in docs if d["kind"] == "Job")
    assert service["apiVersion"] == "v1" and service["spec"]["clusterIP"] == "None"
    assert job["apiVersion"] == "batch/v1"
    spec = job["spec"]
    assert spec["completionMode"] == "Indexed"
    assert spec["parallelism"] == spec["completions"] >= 2
    pod = spec["template"]["spec"]
    assert pod["subdomain"] == service["metadata"]["name"]
    assert service["spec"]["selector"] == {"job-name": job["metadata"]["name"]}
    env = _container_env(pod["containers"][0], **{COMPLETION_INDEX: "1"})
    assert distributed.ENV_JOB_COMPLETION_INDEX in env
    launch = distributed.detect_launch(environ=env, on_cloud_tpu=False)
    coordinator_host = f"{job['metadata']['name']}-0.{pod['subdomain']}"
    assert (launch.source, launch.process_id) == ("k8s", 1)
    assert launch.num_processes == spec["parallelism"]
    assert launch.coordinator.rsplit(":", 1)[0] == coordinator_host


def test_jobset_manifest_points_every_pod_at_the_first_pod_of_the_first_job():
    jobset = yaml.safe_load((LAUNCH / "k8s" / "jobset.yaml").read_text())
    assert jobset["apiVersion"] == "jobset.x-k8s.io/v1alpha2" and jobset["kind"] == "JobSet"
    [rjob] = jobset["spec"]["replicatedJobs"]
    job = rjob["template"]["spec"]
    assert job["completionMode"] == "Indexed" and job["parallelism"] == job["completions"]
    subdomain = jobset["spec"].get("network", {}).get("subdomain", jobset["metadata"]["name"])
    container = job["template"]["spec"]["containers"][0]
    env = _container_env(container, **{COMPLETION_INDEX: "1", JOB_INDEX: "0"})
    launch = distributed.detect_launch(environ=env, on_cloud_tpu=False)
    expected_host = f"{jobset['metadata']['name']}-{rjob['name']}-0-0.{subdomain}"
    assert launch.coordinator.rsplit(":", 1)[0] == expected_host
    assert launch.num_processes == rjob["replicas"] * job["parallelism"]
    assert (launch.source, launch.process_id) == ("k8s", 1)
    assert int(env[distributed.ENV_PROCESSES_PER_JOB]) == job["parallelism"]
