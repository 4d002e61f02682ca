#!/usr/bin/env bash
# One prepared run of the GPU measurements (issues 3 and 4) on a lent machine.
#
#   bash benchmarks/gpu_checks.sh OUTDIR [a|b|c|all]
#
# `c`: torch baseline and the canonical first- and second-order steps, one call.
# `a` (torch baseline, first-order step, MPDS) and `b` (second-order step, paper
# config) each fit one 10-minute device call; `all` (default) runs both.
#
# The machine's image has JAX (CUDA), Flax, optax, orbax and PyTorch but not
# ml_collections: its wheel travels in .whl/ (see the device tool's README).
# Each measurement has its own time limit, most important first, so a slow
# compile cannot eat the whole lease; everything is appended to OUTDIR/gpu.log.
set -u
OUT=${1:?usage: gpu_checks.sh OUTDIR [a|b|all]}
PART=${2:-all}
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

# 2026-11-27 (H200, JAX 0.11.2): the JAX steps did not finish compiling within these limits
# and the MPDS scoring / second-order step aborted in XLA's Triton GEMM fusion
# (triton_tiling_propagation.cc "subdim_size_accumulator == dim_size"); the runs below
# therefore use cuBLAS dots, and the limits are longer (see benchmarks/RESULTS.md).
export XLA_FLAGS="${XLA_FLAGS:-} --xla_gpu_enable_triton_gemm=false"
if [ "$PART" = c ]; then  # one call, first-order step first (the target)
  run 75 python3 benchmarks/darts_torch_reference.py --order both --steps 10
  run 270 python3 benchmarks/search_throughput.py --only darts_cifar_first_order --steps 10
  run 190 python3 benchmarks/search_throughput.py --only darts_cifar_second_order --steps 5
  exit 0
fi
if [ "$PART" != b ]; then
  run 90 python3 benchmarks/darts_torch_reference.py --order both --steps 10
  run 240 python3 benchmarks/search_throughput.py --only darts_cifar_first_order --steps 10
  run 180 python3 benchmarks/mpds_speed.py --val-images 64 --c-sin 8 --resolution 32
fi
if [ "$PART" != a ]; then
  run 270 python3 benchmarks/search_throughput.py --only darts_cifar_second_order --steps 5
  run 270 python3 benchmarks/search_throughput.py --only paper_first_order --steps 10
fi
