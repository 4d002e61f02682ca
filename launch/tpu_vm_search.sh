#!/usr/bin/env bash
# The paper's search on a Cloud TPU VM (one host or a pod slice), data and run in a bucket:
#
#   PROJECT=my-proj ZONE=us-central2-b TPU=dlsjax-v4 ACCELERATOR=v4-32 BUCKET=gs://my-bucket/dlsjax \
#   launch/tpu_vm_search.sh [--config.KEY=VALUE ...]
#
# Creates the VM if needed, installs dlsjax with jax[tpu] on every worker, runs
# `dlsjax search --resume` on all workers (one process per host), then derives the
# architecture with MPDS on worker 0. DATA (default $BUCKET/data/built, from `dlsjax data
# build --data-dir gs://...`) and RUN (default $BUCKET/runs/search) may be set. Rerunning the
# script after a preemption (exit code 75) or a lost VM resumes at the saved step.
# DRY_RUN=1 prints the gcloud commands instead of running them.
source "$(dirname "$0")/tpu_vm_common.sh"
CONFIG="${CONFIG:-paper}"
DATA="${DATA:-$BUCKET/data/built}"
RUN="${RUN:-$BUCKET/runs/search}"

create_vm
install_all
dlsjax_all search --config "$CONFIG" --data-dir "$DATA" --workdir "$RUN" --resume "$@"
dlsjax_worker0 derive --workdir "$RUN"
echo "# genotype: $RUN/genotype.json; train it with launch/tpu_vm_train.sh" >&2
