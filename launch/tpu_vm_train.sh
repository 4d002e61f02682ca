#!/usr/bin/env bash
# Train the derived network (the paper: 5 seeds) on a Cloud TPU VM, then evaluate on worker 0:
#
#   PROJECT=my-proj ZONE=us-central2-b TPU=dlsjax-v4 ACCELERATOR=v4-8 BUCKET=gs://my-bucket/dlsjax \
#   launch/tpu_vm_train.sh [--config.KEY=VALUE ...]
#
# GENOTYPE (default $BUCKET/runs/search/genotype.json), DATA (default $BUCKET/data/built),
# RUN (default $BUCKET/runs/train) and RUNS (default 5) may be set. `--resume` makes a rerun
# after preemption (exit code 75) continue; finished seeds are kept. DRY_RUN=1 prints the
# gcloud commands instead of running them.
source "$(dirname "$0")/tpu_vm_common.sh"
CONFIG="${CONFIG:-paper_train}"
DATA="${DATA:-$BUCKET/data/built}"
RUN="${RUN:-$BUCKET/runs/train}"
GENOTYPE="${GENOTYPE:-$BUCKET/runs/search/genotype.json}"
RUNS="${RUNS:-5}"

create_vm
install_all
dlsjax_all train --config "$CONFIG" --genotype "$GENOTYPE" --data-dir "$DATA" --workdir "$RUN" \
  --runs "$RUNS" --resume "$@"
dlsjax_worker0 evaluate --workdir "$RUN"
echo "# report: $RUN/metrics.json, $RUN/roc_micro.png" >&2
