#!/usr/bin/env bash
# The acceptance check of a restructuring: the canonical search step (images/s, compile time,
# peak memory) and the MPDS speed-up of commit OLD against the working tree, back to back in
# one run, alternating (old, new, old, new) so that the machine's drift hits both alike.
#
#   bash benchmarks/ab_commits.sh OLD_REV [PAIRS]     # prints one JSON line per measurement
#
# OLD_REV is checked out into a temporary git worktree and run with this checkout's venv
# (PYTHONPATH points at the worktree). Persistent compilation cache off.
set -euo pipefail
old_rev=${1:?usage: ab_commits.sh OLD_REV [PAIRS]}
pairs=${2:-2}
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$here/.venv/bin/python}
tmp=$(mktemp -d)
trap 'git -C "$here" worktree remove --force "$tmp/old" >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
git -C "$here" worktree add --detach -f "$tmp/old" "$old_rev" >/dev/null 2>&1
export DLSJAX_CACHE_DIR=off

measure() {  # side root
  local side=$1 root=$2
  for cmd in \
    "benchmarks/search_throughput.py --only darts_cifar_first_order --cpu-devices 2 --steps 3" \
    "benchmarks/mpds_speed.py --val-images 32 --c-sin 8 --resolution 16"; do
    line=$(cd "$root" && PYTHONPATH="$root" $py $cmd 2>/dev/null | grep '^{' | tail -1)
    echo "{\"side\": \"$side\", \"rev\": \"$(git -C "$root" rev-parse --short HEAD)\", \"command\": \"$cmd\", \"result\": ${line:-null}}"
  done
}

for _ in $(seq "$pairs"); do
  measure old "$tmp/old"
  measure new "$here"
done
