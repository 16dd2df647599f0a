#!/usr/bin/env bash
# N processes of fewstep_jax on this machine, joined into one multi-controller JAX job through a
# coordinator on 127.0.0.1: the same code path as a TPU pod or a multi-node GPU cluster, runnable
# on a laptop. Each process gets D simulated CPU devices (-d), or the GPUs it can see.
#
#   launch/local.sh -n 2 -d 4 -- --config=configs/flow_toy2d.py:smoke --workdir=runs/mp
#
# Options: -n processes (default 2), -d CPU devices per process (default: use the real devices),
# -p coordinator port (default 23456). Everything after -- goes to `python -m fewstep_jax.main`.
# Output lines are prefixed with [process id]; the script exits non-zero if any process fails,
# and stops every process on Ctrl-C.
set -euo pipefail

num_processes=2
devices=""
port=23456
while getopts "n:d:p:h" opt; do
  case "$opt" in
    n) num_processes="$OPTARG" ;;
    d) devices="$OPTARG" ;;
    p) port="$OPTARG" ;;
    h) sed -n '2,13p' "$0"; exit 0 ;;
    *) echo "usage: $0 [-n N] [-d DEVICES] [-p PORT] -- MAIN_ARGS..." >&2; exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
python="${PYTHON:-python}"

pids=()
cleanup() { for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done; }
trap cleanup INT TERM

for ((i = 0; i < num_processes; i++)); do
  (
    export FEWSTEP_DISTRIBUTED=1 FEWSTEP_COORDINATOR="127.0.0.1:${port}"
    export FEWSTEP_NUM_PROCESSES="$num_processes" FEWSTEP_PROCESS_ID="$i"
    if [[ -n "$devices" ]]; then
      export JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES="$devices"
    fi
    "$python" -m fewstep_jax.main "$@" 2>&1 | sed -u "s/^/[$i] /"
    exit "${PIPESTATUS[0]}"
  ) &
  pids+=("$!")
done

status=0
for pid in "${pids[@]}"; do
  wait "$pid" || status=$?
done
exit "$status"
