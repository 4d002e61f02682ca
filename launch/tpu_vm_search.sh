#!/usr/bin/env bash
# Create a Cloud TPU VM (single host or pod slice), install dlsjax on every
# worker and run the search on all workers at once. Not runnable offline; needs
# gcloud authenticated for PROJECT. Usage:
#
#   PROJECT=my-proj ZONE=us-central2-b TPU=dlsjax-v4 ACCELERATOR=v4-32 \
#   REPO=https://github.com/ORG/dlsjax.git DATA=/mnt/shared/glioma_built \
#   WORKDIR=/mnt/shared/runs/search1 launch/tpu_vm_search.sh [--set key=value ...]
#
# Every worker runs the same command; dlsjax calls jax.distributed.initialize()
# when the environment describes a multi-host slice (search.distributed=auto),
# each host reads its own shard of the data (pipeline.host_shard) and gradients
# are averaged over all chips. DATA and WORKDIR are local paths that every
# worker must see (a shared mount such as Filestore/NFS; DATA may instead be
# copied to the same path on each worker). gs:// paths are not supported yet.
set -euo pipefail
: "${PROJECT:?}" "${ZONE:?}" "${TPU:?}" "${REPO:?}" "${DATA:?}" "${WORKDIR:?}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
CONFIG="${CONFIG:-paper}"
EXTRA_ARGS=("$@")

if ! gcloud compute tpus tpu-vm describe "$TPU" --project "$PROJECT" --zone "$ZONE" >/dev/null 2>&1; then
  gcloud compute tpus tpu-vm create "$TPU" --project "$PROJECT" --zone "$ZONE" \
    --accelerator-type "$ACCELERATOR" --version "$VERSION"
fi

ssh_all() {
  gcloud compute tpus tpu-vm ssh "$TPU" --project "$PROJECT" --zone "$ZONE" --worker=all \
    --command "$1"
}

ssh_all "set -e; test -d dlsjax || git clone $REPO dlsjax; cd dlsjax && git pull --ff-only \
  && python3 -m venv .venv && .venv/bin/pip install -q -U pip \
  && .venv/bin/pip install -q -e . 'jax[tpu]'"

quoted=""
for a in "${EXTRA_ARGS[@]}"; do quoted+=" $(printf '%q' "$a")"; done
ssh_all "cd dlsjax && .venv/bin/dlsjax search --config $CONFIG --data-dir $DATA \
  --workdir $WORKDIR --resume --set search.distributed=auto$quoted"
