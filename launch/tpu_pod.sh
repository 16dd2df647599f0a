#!/usr/bin/env bash
# Train on a Cloud TPU pod slice: every worker VM runs the same command, and JAX's
# multi-controller runtime (jax.distributed.initialize, which detects TPU pods by itself) joins
# them into one job. Optionally creates the slice first.
#
#   launch/tpu_pod.sh -t my-v4-32 -z us-central2-b [-a v4-32 -v tpu-ubuntu2204-base] [-r REPO_URL] \
#       -- --config=configs/sct_imagenet64.py:m --workdir=gs://bucket/runs/sct_imagenet64_m
#
# -a: accelerator type; with it the slice is created (gcloud compute tpus tpu-vm create).
# -v: TPU VM software version (default tpu-ubuntu2204-base). -r: git URL cloned on every worker
# (default: the `origin` remote of this checkout). The workdir must be visible to all workers
# (a gs:// bucket or a shared filesystem); so must data.data_dir (set --config.data.data_dir).
set -euo pipefail

tpu="" zone="" accel="" version="tpu-ubuntu2204-base"
repo="$(git config --get remote.origin.url 2>/dev/null || true)"
while getopts "t:z:a:v:r:h" opt; do
  case "$opt" in
    t) tpu="$OPTARG" ;;
    z) zone="$OPTARG" ;;
    a) accel="$OPTARG" ;;
    v) version="$OPTARG" ;;
    r) repo="$OPTARG" ;;
    h) sed -n '2,13p' "$0"; exit 0 ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[[ "${1:-}" == "--" ]] && shift
if [[ -z "$tpu" || -z "$zone" || -z "$repo" || $# -eq 0 ]]; then
  echo "usage: $0 -t TPU_NAME -z ZONE [-a ACCEL -v VERSION] [-r REPO_URL] -- MAIN_ARGS..." >&2
  exit 2
fi

if [[ -n "$accel" ]]; then
  gcloud compute tpus tpu-vm create "$tpu" --zone="$zone" --accelerator-type="$accel" --version="$version"
fi

args=$(printf '%q ' "$@")
setup="test -d fewstep_jax || git clone $repo fewstep_jax; cd fewstep_jax && git pull --ff-only && \
python3 -m pip install -q -e . 'jax[tpu]'"
gcloud compute tpus tpu-vm ssh "$tpu" --zone="$zone" --worker=all \
  --command="$setup && python3 -m fewstep_jax.main --distributed $args"
