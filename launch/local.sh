#!/usr/bin/env bash
# Train on this machine: one process over all its devices, or, with NUM_PROCESSES=N, N processes
# joined by jax.distributed on CPU devices (multi-host behaviour without a cluster).
#
# Usage: [NUM_PROCESSES=N] [JAX_NUM_CPU_DEVICES=D] launch/local.sh \
#            --config=FILE[:ARG] --workdir=DIR [--config.KEY=VALUE ...]
#   e.g. NUM_PROCESSES=2 JAX_NUM_CPU_DEVICES=4 launch/local.sh --config=configs/siglip.py:tiny \
#            --workdir=runs/two_process
#   PYTHON       interpreter (default: .venv/bin/python of this tree if present, else python3)
#   VLM_JAX_PORT coordinator port on localhost (default: a free one)
# Process 0 prints to the terminal, process k > 0 to DIR/logs/process_k.log. SIGTERM, or a
# Ctrl-C (SIGINT), is passed to every process as SIGTERM: they agree on a step, save a
# checkpoint and exit 0. If one process fails, the others are killed and its exit status is
# returned.
set -euo pipefail

usage() {
  sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
default_python=python3
if [ -x "$root/.venv/bin/python" ]; then default_python=$root/.venv/bin/python; fi
python=${PYTHON:-$default_python}
num_processes=${NUM_PROCESSES:-1}
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"

workdir=""
for arg in "$@"; do
  case $arg in
    -h | --help) usage ;;
    --workdir=*) workdir=${arg#--workdir=} ;;
  esac
done
if [ $# -eq 0 ] || [ -z "$workdir" ]; then usage; fi
if ! [[ $num_processes =~ ^[1-9][0-9]*$ ]]; then
  echo "NUM_PROCESSES must be a positive integer, got '$num_processes'" >&2
  exit 2
fi

if [ "$num_processes" -eq 1 ]; then
  exec "$python" -m vlm_jax.main "$@"
fi

port=${VLM_JAX_PORT:-$("$python" -c \
  'import socket; s = socket.socket(); s.bind(("localhost", 0)); print(s.getsockname()[1])')}
export JAX_PLATFORMS=cpu VLM_JAX_COORDINATOR=localhost:$port VLM_JAX_NUM_PROCESSES=$num_processes
logs=$workdir/logs
mkdir -p "$logs"
pids=()
for ((k = 0; k < num_processes; k++)); do
  if [ "$k" -eq 0 ]; then
    VLM_JAX_PROCESS_ID=$k "$python" -m vlm_jax.main "$@" &
  else
    VLM_JAX_PROCESS_ID=$k "$python" -m vlm_jax.main "$@" >"$logs/process_$k.log" 2>&1 &
  fi
  pids+=("$!")
done
echo "started $num_processes processes (coordinator localhost:$port); processes 1.. log to $logs" >&2

forward() { kill -s "$1" "${pids[@]}" 2>/dev/null || true; }
# Ctrl-C becomes SIGTERM: jax's preemption sync (which makes every process save the same
# step) listens for SIGTERM only.
trap 'forward TERM' TERM
trap 'forward TERM' INT

# `wait -n` returns when a process ends (then it is gone) or when a trapped signal arrives
# (then none is); so each return, find which processes have ended.
status=0
finished=0
declare -A ended=()
while [ "$finished" -lt "$num_processes" ]; do
  if wait -n; then rc=0; else rc=$?; fi
  for k in "${!pids[@]}"; do
    if [ -z "${ended[$k]:-}" ] && ! kill -0 "${pids[$k]}" 2>/dev/null; then
      ended[$k]=1
      finished=$((finished + 1))
      if [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then
        status=$rc
        echo "process $k exited with status $rc; stopping the others" >&2
        if [ "$k" -gt 0 ]; then tail -n 20 "$logs/process_$k.log" >&2; fi
        forward KILL
      fi
    fi
  done
done
exit "$status"
