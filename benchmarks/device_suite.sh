#!/usr/bin/env bash
# The prepared accelerator measurements (issue 35), one call on a lent H100/H200:
#
#   bash benchmarks/device_suite.sh OUT            # the real sizes, < 8 minutes in all
#   DRY_RUN=1 bash benchmarks/device_suite.sh OUT  # tiny sizes on the CPU (tests/device_suite_test.py)
#
# Each measurement runs under its own time limit, most important first, and prints
# its JSON line as soon as it has it; everything goes to OUT/results.jsonl (one JSON
# object per line, the card's name in every one) and OUT/suite.log. A measurement
# that fails or times out leaves a line with "error" and the suite goes on.
# Paper-scale search time is extrapolated from the timed steps and labelled so.
set -u
OUT=${1:?usage: device_suite.sh OUTDIR}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
LOG=$OUT/suite.log
: >"$RESULTS"
export PYTHONPATH=${PYTHONPATH:+$PYTHONPATH:}$PWD PYTHONUNBUFFERED=1
export DLSJAX_CACHE_DIR=${DLSJAX_CACHE_DIR:-off} XLA_PYTHON_CLIENT_PREALLOCATE=false
PY=${PYTHON:-python3}
DRY=${DRY_RUN:-0}
CARD=$($PY -c "import jax; print(jax.devices()[0].device_kind)" 2>/dev/null || echo unknown)

# Sizes: the real ones, or tiny ones for the CPU dry run (same commands, same code paths).
if [ "$DRY" = 1 ]; then
  SMALL=(--config.model.op_set=none,skip_connect,sep_conv_3x3 --config.model.cell_inner_nodes=2)
  SEARCH=(--steps 1 --batch 4 --config.model.c_sin_search=4 --config.model.resolution=16 --config.model.k_r=1
    --config.model.stem_inner_nodes=1 "${SMALL[@]}")
  CANON=(--steps 1 --batch 4 --config.model.darts_c_search=4 --config.model.layers_search=3 "${SMALL[@]}")
  INFER=(--batch 4 --batches 1 --config.model.c_sin_train=8 --config.model.resolution=16)
  MPDS=(--val-images 8 --c-sin 4 --resolution 16 --batch 4 --ops none,skip_connect,sep_conv_3x3)
  TORCH=(--steps 1 --batch 4)
  SEEDS=2
  LIMIT=(300 300 300 240 300 300 180 180 300)  # generous: a slow or shared CPU
else
  SEARCH=(--steps 10)
  CANON=(--steps 10)
  INFER=(--batch 128 --batches 20)
  MPDS=(--val-images 64 --c-sin 48 --resolution 64 --batch 16)
  TORCH=(--steps 10)
  SEEDS=5
  LIMIT=(80 70 80 45 60 60 20 20 40)
fi

run() {  # run LIMIT_S NAME CMD...: JSON lines to RESULTS (tagged with the card), all to LOG
  local limit=$1 name=$2
  shift 2
  echo "### $name: $* (limit ${limit}s)" >>"$LOG"
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.out" 2>>"$LOG"
  local rc=$?
  grep -h '^{' "$OUT/$name.out" | while IFS= read -r line; do
    echo "${line%\}}, \"suite\": \"$name\", \"card\": \"$CARD\", \"dry_run\": $([ "$DRY" = 1 ] && echo true || echo false)}"
  done | tee -a "$RESULTS"
  if [ $rc -ne 0 ] || ! grep -q '^{' "$OUT/$name.out"; then
    local why="exit $rc"
    [ $rc -eq 124 ] && why="time limit ${limit}s"
    echo "{\"suite\": \"$name\", \"card\": \"$CARD\", \"error\": \"$why\"}" | tee -a "$RESULTS"
  fi
  echo "### $name: rc=$rc wall=$((SECONDS - t0))s" >>"$LOG"
}

{ date -u; nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1; } >>"$LOG"
run "${LIMIT[0]}" search_step_f32 $PY benchmarks/search_throughput.py --inline --only paper_first_order "${SEARCH[@]}"
run "${LIMIT[1]}" search_step_bf16 $PY benchmarks/search_throughput.py --inline --only paper_first_order "${SEARCH[@]}" --config.model.dtype=bfloat16
run "${LIMIT[2]}" search_step_seeds $PY benchmarks/search_throughput.py --inline --only paper_first_order "${SEARCH[@]}" --seeds "$SEEDS"
if $PY -c "import torch" 2>/dev/null; then
  run "${LIMIT[3]}" torch_reference $PY benchmarks/darts_torch_reference.py --order both "${TORCH[@]}"
else
  echo "{\"suite\": \"torch_reference\", \"card\": \"$CARD\", \"error\": \"torch not installed\"}" | tee -a "$RESULTS"
fi
run "${LIMIT[4]}" canonical_first_order $PY benchmarks/search_throughput.py --inline --only darts_cifar_first_order "${CANON[@]}"
run "${LIMIT[5]}" canonical_second_order $PY benchmarks/search_throughput.py --inline --only darts_cifar_second_order "${CANON[@]}"
run "${LIMIT[6]}" inference_f32 $PY benchmarks/inference_throughput.py --dtype float32 "${INFER[@]}"
run "${LIMIT[7]}" inference_bf16 $PY benchmarks/inference_throughput.py --dtype bfloat16 "${INFER[@]}"
run "${LIMIT[8]}" mpds_vmapped_vs_loop $PY benchmarks/mpds_speed.py "${MPDS[@]}"

# The paper's search (952 images in halves of 476, batch 16, 50 epochs: 1,450 steps),
# extrapolated from the timed steps of the f32 and bf16 search steps.
$PY - "$RESULTS" <<'EOF' | tee -a "$RESULTS"
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {r["suite"]: r for r in rows if "suite" in r}
one, many = by.get("search_step_f32", {}), by.get("search_step_seeds", {})
if "step_s" in one and "step_s" in many:  # N searches in one program against one search
  print(json.dumps({
    "suite": "seeds_vs_one", "card": one["card"], "seeds": many["seeds"],
    "wall_ratio": round(many["step_s"] / one["step_s"], 2),
    "searches_per_hour_ratio": round(many["seeds"] * one["step_s"] / many["step_s"], 2),
    "dry_run": one.get("dry_run", False),
  }))
for r in rows:
  if r.get("suite", "") in ("search_step_f32", "search_step_bf16", "search_step_seeds") and "step_s" in r:
    steps = 50 * (476 // 16)
    print(json.dumps({
      "suite": "paper_search_" + r["suite"].split("_")[-1], "card": r["card"],
      "seeds": r.get("seeds", 1),
      "extrapolated": True, "from_steps": r.get("steps"), "steps": steps,
      "minutes": round((r["compile_s"] + steps * r["step_s"]) / 60, 2),
      "dry_run": r.get("dry_run", False),
    }))
EOF
echo "### done: $RESULTS" >>"$LOG"
