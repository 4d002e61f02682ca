#!/usr/bin/env bash
# One prepared run of the GPU measurements (issues 3 and 4) on a lent machine.
#
#   bash benchmarks/gpu_checks.sh OUTDIR
#
# The machine's image has JAX (CUDA), Flax, optax, orbax and PyTorch but not
# ml_collections: its wheel travels in .whl/ (see the device tool's README).
# Each measurement has its own time limit, most important first, so a slow
# compile cannot eat the whole lease; everything is appended to OUTDIR/gpu.log.
set -u
OUT=${1:?usage: gpu_checks.sh OUTDIR}
LOG=$OUT/gpu.log
if ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
else
  export PYTHONPATH=$PWD
fi
export DLSJAX_CACHE_DIR=off PYTHONUNBUFFERED=1 XLA_PYTHON_CLIENT_PREALLOCATE=false
run() {  # run LIMIT_S CMD...: one measurement, its output and exit code in the log
  local limit=$1
  shift
  echo "### $* (limit ${limit}s)" | tee -a "$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | grep -E '^\{|Error|error|Traceback' | tail -20 | tee -a "$LOG"
  local rc=${PIPESTATUS[0]}
  pkill -9 -f "python3 .*benchmarks/" 2>/dev/null  # a timed-out measurement's children too
  echo "### rc=$rc wall=$((SECONDS - t0))s" | tee -a "$LOG"
}
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import jax, torch; print('jax', jax.__version__, jax.devices(), 'torch', torch.__version__)"
} 2>&1 | tee -a "$LOG"

run 90 python3 benchmarks/darts_torch_reference.py --order both --steps 10
run 130 python3 benchmarks/search_throughput.py --only darts_cifar_first_order --steps 10
run 120 python3 benchmarks/search_throughput.py --only paper_first_order --steps 10
run 90 python3 benchmarks/mpds_speed.py --val-images 64 --c-sin 8 --resolution 32
run 140 python3 benchmarks/search_throughput.py --only darts_cifar_second_order --steps 5
