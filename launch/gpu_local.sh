#!/usr/bin/env bash
# Search, derive, train and evaluate on this machine's GPUs (all of them; one process):
#
#   DATA=/data/built RUN=runs/paper launch/gpu_local.sh [--config.KEY=VALUE ...]
#
# Installs dlsjax with jax[cuda12] into .venv unless it is there (SKIP_INSTALL=1 skips this).
# DATA and RUN may be local paths or gs:// (needs `pip install '.[gcs]'` and credentials).
# Every stage passes --resume: rerunning after an interruption (exit code 75 after SIGTERM)
# continues. DRY_RUN=1 prints the commands instead of running them.
source "$(dirname "$0")/common.sh"
: "${DATA:?set DATA (a dataset built by dlsjax data build)}"
RUN="${RUN:-runs/paper}"
SEARCH_CONFIG="${SEARCH_CONFIG:-paper}"
TRAIN_CONFIG="${TRAIN_CONFIG:-paper_train}"
RUNS="${RUNS:-5}"
DLSJAX=.venv/bin/dlsjax

if [[ "${SKIP_INSTALL:-0}" != 1 ]] && { [[ "${DRY_RUN:-0}" == 1 ]] || [[ ! -x "$DLSJAX" ]]; }; then
  run python3 -m venv .venv
  run .venv/bin/pip install -q -e '.[gcs]' 'jax[cuda12]'
fi
run "$DLSJAX" search --config "$SEARCH_CONFIG" --data-dir "$DATA" --workdir "$RUN/search" --resume "$@"
run "$DLSJAX" derive --workdir "$RUN/search"
run "$DLSJAX" train --config "$TRAIN_CONFIG" --genotype "$RUN/search/genotype.json" \
  --data-dir "$DATA" --workdir "$RUN/train" --runs "$RUNS" --resume
run "$DLSJAX" evaluate --workdir "$RUN/train"
