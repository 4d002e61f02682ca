# Shared by the launch scripts (sourced, not run). DRY_RUN=1 prints each command instead of
# running it, one per line, so a test can check them and a user can read them first.
set -euo pipefail

run() {
  if [[ "${DRY_RUN:-0}" == 1 ]]; then
    quote "$@"
    echo
  else
    "$@"
  fi
}

# Hosts of a Cloud TPU slice from its accelerator type: v4/v5p count TensorCores (2 per
# chip, 4 chips per host: 8 per host), v5e/v6e ("v5litepod-N", "v6e-N") count chips
# (4 per host on multi-host slices, up to 8 on one host).
tpu_hosts() {
  local type="$1" n="${1##*-}"
  case "$type" in
    v4-*|v5p-*) echo $(( (n + 7) / 8 )) ;;
    v5litepod-*|v6e-*) if (( n <= 8 )); then echo 1; else echo $(( n / 4 )); fi ;;
    *) echo "unknown accelerator type $type (expected v4-N, v5p-N, v5litepod-N or v6e-N)" >&2
       return 1 ;;
  esac
}

# A command as one shell line: words with shell characters in single quotes, others bare.
quote() {
  local out=() a q="'"
  for a in "$@"; do
    if [[ "$a" =~ ^[A-Za-z0-9_./:=,@%+-]+$ ]]; then out+=("$a"); else out+=("$q${a//$q/$q\\$q$q}$q"); fi
  done
  printf '%s' "${out[*]}"
}
