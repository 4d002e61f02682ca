# Cloud TPU VM helpers shared by tpu_vm_search.sh and tpu_vm_train.sh (sourced).
# shellcheck source=launch/common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
: "${PROJECT:?set PROJECT}" "${ZONE:?set ZONE}" "${TPU:?set TPU (the VM name)}"
: "${BUCKET:?set BUCKET (gs://bucket/prefix for data and runs)}"
ACCELERATOR="${ACCELERATOR:-v4-8}"
VERSION="${VERSION:-tpu-ubuntu2204-base}"
REPO="${REPO:-https://github.com/dlsjax/dlsjax.git}"
REF="${REF:-main}"
HOSTS="$(tpu_hosts "$ACCELERATOR")"
echo "# slice $ACCELERATOR: $HOSTS host(s), one dlsjax process per host" >&2

tpu() { run gcloud compute tpus tpu-vm "$@" --project "$PROJECT" --zone "$ZONE"; }

# Create the VM unless it exists (SPOT=1: a Spot VM, which can be preempted).
create_vm() {
  local spot=()
  [[ "${SPOT:-0}" == 1 ]] && spot=(--spot)
  if [[ "${DRY_RUN:-0}" == 1 ]] || ! gcloud compute tpus tpu-vm describe "$TPU" \
      --project "$PROJECT" --zone "$ZONE" >/dev/null 2>&1; then
    tpu create "$TPU" --accelerator-type "$ACCELERATOR" --version "$VERSION" "${spot[@]}"
  fi
}

# Clone (or update) dlsjax and install it with the TPU wheel and gcsfs on every worker.
install_all() {
  ssh_workers all "set -e; test -d dlsjax || git clone -q $REPO dlsjax; cd dlsjax; \
git fetch -q origin; git checkout -q $REF; git reset -q --hard origin/$REF; python3 -m venv .venv; \
.venv/bin/pip install -q -U pip; .venv/bin/pip install -q -e '.[gcs]' 'jax[tpu]'"
}

ssh_workers() {  # ssh_workers all|0 COMMAND
  tpu ssh "$TPU" --worker="$1" --command "$2"
}

# The same dlsjax command on every worker; each is one process of the job (jax.distributed
# finds the others from the TPU environment). Exit code 75: preempted, rerun to resume.
dlsjax_all() {
  ssh_workers all "cd dlsjax && .venv/bin/dlsjax $(quote "$@")"
}

# One process on worker 0 with that host's chips only (v4/v5p host: 2x2x1 chips), for the
# derivation; a JAX process on one worker of a multi-host slice otherwise waits for the others.
dlsjax_worker0() {
  local env=""
  (( HOSTS > 1 )) && env="TPU_PROCESS_BOUNDS=1,1,1 TPU_CHIPS_PER_PROCESS_BOUNDS=2,2,1 TPU_VISIBLE_CHIPS=0,1,2,3 "
  ssh_workers 0 "cd dlsjax && ${env}.venv/bin/dlsjax $(quote "$@")"
}
