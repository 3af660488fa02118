#!/usr/bin/env bash
# launch/local.sh NPROC CONFIG [key=value ...]
#
# Starts NPROC processes of `scaling-jax train CONFIG key=value ...` on this machine, joined by
# jax.distributed on 127.0.0.1 (the test stand-in for a cluster). Each process sees
# DEVICES_PER_PROC fake CPU devices, so NPROC=2 gives a global mesh of 2 x 4 = 8 devices.
#
# Environment (all optional):
#   SCALING_JAX_CMD        command to run instead of `scaling-jax train` (word-split; CONFIG and
#                          the overrides are appended), e.g. "python tests/some_script.py"
#   DEVICES_PER_PROC       CPU devices per process (default 4)
#   SCALING_JAX_PORT       coordinator port (default: a free port)
#   SCALING_JAX_INIT_TIMEOUT_S / _HEARTBEAT_TIMEOUT_S / _SHUTDOWN_TIMEOUT_S
#                          jax.distributed timeouts (defaults here 120 / 30 / 30 s)
#   KILL_GRACE_S           seconds between SIGTERM and SIGKILL for the survivors (default 5;
#                          jax's preemption service catches SIGTERM, so SIGKILL usually ends them)
#
# Output: rank 0's stdout passes through unchanged; every other line is prefixed "[rank R] "
# (stderr stays on stderr). Exit status: 0 when every rank exits 0; otherwise the first failing
# rank's status, after the remaining ranks are terminated (bounded by KILL_GRACE_S).
set -euo pipefail

usage() { sed -n '2,/^[^#]/{/^#/p}' "$0" | sed 's/^# \{0,1\}//'; }
if [[ $# -lt 2 || "$1" == "-h" || "$1" == "--help" ]]; then
    usage >&2
    exit 2
fi
nproc_arg=$1
shift
if ! [[ "$nproc_arg" =~ ^[1-9][0-9]*$ ]]; then
    echo "local.sh: NPROC must be a positive integer, got '$nproc_arg'" >&2
    exit 2
fi

read -r -a cmd <<< "${SCALING_JAX_CMD:-scaling-jax train}"
python_bin=$(command -v python3 || command -v python)
devices_per_proc=${DEVICES_PER_PROC:-4}
kill_grace_s=${KILL_GRACE_S:-5}
port=${SCALING_JAX_PORT:-$("$python_bin" -c 'import socket
s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}

# Replace any device-count flag the caller has (pytest's conftest sets 8) with ours.
xla_flags=$(printf '%s' "${XLA_FLAGS:-}" | sed -E 's/--xla_force_host_platform_device_count=[0-9]+//g')
export XLA_FLAGS="${xla_flags} --xla_force_host_platform_device_count=${devices_per_proc}"
export JAX_PLATFORMS=cpu
export PYTHONUNBUFFERED=1
export SCALING_JAX_COORDINATOR="127.0.0.1:${port}"
export SCALING_JAX_NUM_PROCESSES="$nproc_arg"
export SCALING_JAX_INIT_TIMEOUT_S=${SCALING_JAX_INIT_TIMEOUT_S:-120}
export SCALING_JAX_HEARTBEAT_TIMEOUT_S=${SCALING_JAX_HEARTBEAT_TIMEOUT_S:-30}
export SCALING_JAX_SHUTDOWN_TIMEOUT_S=${SCALING_JAX_SHUTDOWN_TIMEOUT_S:-30}

state_dir=$(mktemp -d "${TMPDIR:-/tmp}/scaling_jax_local.XXXXXX")
pgids=()

# A shell loop, not awk: mawk buffers its input from a pipe, which would delay and lose lines.
prefix() {
    local line
    while IFS= read -r line || [[ -n "$line" ]]; do printf '[rank %s] %s\n' "$1" "$line"; done
}

# Rank 0's lines unchanged, but written one whole line at a time (as `prefix` does), so the
# ranks' lines never interleave mid-line (`cat` may write half a line).
whole_lines() {
    local line
    while IFS= read -r line || [[ -n "$line" ]]; do printf '%s\n' "$line"; done
}

# One rank: its stdout to our stdout (prefixed unless rank 0), its stderr prefixed to our stderr,
# its exit status into $state_dir/rc.R once it ends.
run_rank() {
    local rank=$1
    shift
    local out_filter=(prefix "$rank")
    [[ "$rank" == 0 ]] && out_filter=(whole_lines)
    {
        {
            set +e
            SCALING_JAX_PROCESS_ID=$rank "${cmd[@]}" "$@"
            echo $? > "$state_dir/rc.$rank.tmp" && mv "$state_dir/rc.$rank.tmp" "$state_dir/rc.$rank"
        } 2>&1 1>&3 3>&- | prefix "$rank" >&2
    } 3>&1 | "${out_filter[@]}"
}

terminate_all() {
    local pgid
    for pgid in "${pgids[@]}"; do kill -TERM -- "-$pgid" 2> /dev/null || true; done
    local deadline=$((SECONDS + kill_grace_s))
    while ((SECONDS < deadline)); do
        local alive=0
        for pgid in "${pgids[@]}"; do kill -0 -- "-$pgid" 2> /dev/null && alive=1; done
        ((alive)) || break
        sleep 0.2
    done
    for pgid in "${pgids[@]}"; do kill -KILL -- "-$pgid" 2> /dev/null || true; done
}

cleanup() {
    trap - EXIT INT TERM
    terminate_all
    rm -rf "$state_dir"
}
trap cleanup EXIT
trap 'echo "local.sh: interrupted, stopping all ranks" >&2; exit 130' INT TERM

echo "local.sh: ${nproc_arg} processes x ${devices_per_proc} CPU devices, coordinator" \
    "${SCALING_JAX_COORDINATOR}: ${cmd[*]} $*" >&2
# Job control gives each rank its own process group, so stopping it stops its children and filters.
set -m
for ((rank = 0; rank < nproc_arg; rank++)); do
    run_rank "$rank" "$@" &
    pgids+=("$!")
done
set +m

status=0
while :; do
    done_count=0
    for ((rank = 0; rank < nproc_arg; rank++)); do
        if [[ ! -f "$state_dir/rc.$rank" ]]; then
            # A rank whose group vanished without a status (killed from outside) is a failure.
            if ! kill -0 "${pgids[$rank]}" 2> /dev/null && [[ ! -f "$state_dir/rc.$rank" ]]; then
                echo "local.sh: rank $rank ended without an exit status" >&2
                status=1
                break 2
            fi
            continue
        fi
        rc=$(< "$state_dir/rc.$rank")
        done_count=$((done_count + 1))
        if [[ "$rc" != 0 ]]; then
            echo "local.sh: rank $rank exited with status $rc; stopping the other ranks" >&2
            status=$rc
            break 2
        fi
    done
    ((done_count == nproc_arg)) && break
    sleep 0.2
done

if [[ "$status" == 0 ]]; then
    # Every rank ended well: let the output filters drain.
    for pgid in "${pgids[@]}"; do wait "$pgid" 2> /dev/null || true; done
fi
exit "$status"
