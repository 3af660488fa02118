#!/usr/bin/env bash
# launch/tpu_pod.sh TPU_NAME ZONE CONFIG [key=value ...]
#
# Runs `scaling-jax train CONFIG key=value ...` on every worker of a Cloud TPU VM pod slice with
# `gcloud compute tpus tpu-vm ssh --worker=all`. No coordinator is needed: on Cloud TPU,
# scaling_jax.distributed.initialize() lets jax.distributed detect the workers (GCE metadata).
# The repository must already be installed on every worker (REMOTE_DIR).
#
# Environment (all optional): PROJECT (gcloud --project), REMOTE_DIR (default ~/scaling_jax),
# VERB (default train), SCALING_JAX_INIT_TIMEOUT_S (default 600),
# SCALING_JAX_HEARTBEAT_TIMEOUT_S (default 100), DRY_RUN=1 (print the exact command, exit 0).
set -euo pipefail

if [[ $# -lt 3 ]]; then
    echo "usage: launch/tpu_pod.sh TPU_NAME ZONE CONFIG [key=value ...]" >&2
    exit 2
fi
tpu_name=$1
zone=$2
shift 2

verb=${VERB:-train}
init_timeout=${SCALING_JAX_INIT_TIMEOUT_S:-600}
heartbeat_timeout=${SCALING_JAX_HEARTBEAT_TIMEOUT_S:-100}
for pair in "SCALING_JAX_INIT_TIMEOUT_S=$init_timeout" "SCALING_JAX_HEARTBEAT_TIMEOUT_S=$heartbeat_timeout"; do
    if ! [[ ${pair#*=} =~ ^[0-9]+$ ]]; then
        echo "launch/tpu_pod.sh: ${pair%%=*} must be a whole number of seconds, got '${pair#*=}'" >&2
        exit 2
    fi
done
remote_dir=${REMOTE_DIR:-'~/scaling_jax'}
# The command each worker's shell runs: every value is quoted for that shell (printf %q), except
# a leading ~ of REMOTE_DIR, left for the remote shell to expand to the worker's home.
if [[ $remote_dir == "~" || $remote_dir == "~/"* ]]; then
    remote_dir_q="~$(printf '%q' "${remote_dir:1}")"
else
    remote_dir_q=$(printf '%q' "$remote_dir")
fi
remote="cd ${remote_dir_q} && SCALING_JAX_INIT_TIMEOUT_S=$(printf '%q' "$init_timeout")"
remote+=" SCALING_JAX_HEARTBEAT_TIMEOUT_S=$(printf '%q' "$heartbeat_timeout")"
remote+=" PYTHONUNBUFFERED=1 scaling-jax $(printf '%q' "$verb")$(printf ' %q' "$@")"

cmd=(gcloud compute tpus tpu-vm ssh "$tpu_name" --zone "$zone" --worker=all)
[[ -n "${PROJECT:-}" ]] && cmd+=(--project "$PROJECT")
cmd+=(--command "$remote")

if [[ "${DRY_RUN:-0}" == 1 ]]; then
    printf '%q ' "${cmd[@]}"
    printf '\n'
    exit 0
fi
exec "${cmd[@]}"
