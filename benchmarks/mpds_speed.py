"""Wall time of a whole MPDS derivation: vmapped candidate scoring vs a per-candidate loop.

    python benchmarks/mpds_speed.py [--val-images 64] [--c-sin 16] [--resolution 32] [--log FILE]

The paper search space (all four learnable parts, 10 operations, the paper's
cell layout) with random weights and strongly non-uniform random alphas, and
random validation images; both derivations run in this process on the same
inputs (compile time included, persistent cache off) and must give the same
genotype and the same per-candidate scores (``--metric``, default the loss,
within a relative 2e-5: two compiled programs round differently);
the script exits 1 when they differ, or when every candidate of every
decision tied (then nothing was compared). One JSON line with
``vmapped_s``, ``loop_s``, ``speedup``, ``identical``, ``backend`` and the
sizes (a full paper-size derivation, C_sin 48 at 64x64 over the real alpha
half, takes hours on a 2-core CPU; the flags scale it down).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("DLSJAX_CACHE_DIR", "off")

import jax  # noqa: E402
import numpy as np  # noqa: E402

from dlsjax import derivation, netspec, runtime, supernet  # noqa: E402
from dlsjax.configs import get_config  # noqa: E402
from dlsjax.derivation import masks as mask_ops  # noqa: E402
from dlsjax.derivation import scoring  # noqa: E402


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--val-images", type=int, default=64)
  ap.add_argument("--c-sin", type=int, default=16, help="model.c_sin_search (paper: 48)")
  ap.add_argument("--resolution", type=int, default=32, help="paper: 64")
  ap.add_argument("--batch", type=int, default=16, help="validation batch (paper search: 16)")
  ap.add_argument("--chunk", type=int, default=0, help="candidates per vmapped call (0: an edge's)")
  ap.add_argument("--only", choices=["vmapped", "loop"], help="run one side (no comparison)")
  ap.add_argument(
    "--metric", default="loss", choices=["loss", "accuracy", "auc"],
    help="derive.metric (default loss: on random labels accuracy can tie on every candidate)",
  )  # fmt: skip
  ap.add_argument("--ops", help="model.op_set, comma-separated (default: the paper's 10)")
  ap.add_argument(
    "--log", help="write the first side's decisions (derivation log) to this JSON file"
  )
  args = ap.parse_args(argv)
  runtime.setup()
  cfg = get_config("paper")
  cfg.model.c_sin_search = args.c_sin
  cfg.model.resolution = args.resolution
  if args.ops:
    cfg.model.op_set = args.ops
  spec = netspec.spec_from_config(cfg.model, phase="search")
  variables = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = jax.tree.map(lambda a: a * 1000.0, supernet.init_alphas(spec, jax.random.PRNGKey(1)))
  rng = np.random.default_rng(0)
  r = spec.resolution
  n_batches = max(args.val_images // args.batch, 1)
  batches = [
    {
      "images": {m.name: rng.random((args.batch, r, r, m.channels), np.float32)
                 for m in spec.modalities},
      "label": rng.integers(0, spec.num_classes, args.batch).astype(np.int32),
    }
    for _ in range(n_batches)
  ]  # fmt: skip
  out = {
    "val_images": n_batches * args.batch,
    "c_sin": args.c_sin,
    "resolution": args.resolution,
    "batch": args.batch,
    "chunk": args.chunk,
    "parts": list(spec.topologies()),
    "ops": len(spec.op_set),
    "devices": jax.local_device_count(),
    "backend": jax.default_backend(),
  }
  results = {}
  sides = [args.only] if args.only else ["vmapped", "loop"]
  for side in sides:
    opts = derivation.DeriveOptions(metric=args.metric, chunk=args.chunk, vmap=side == "vmapped")
    t = time.perf_counter()
    ev = scoring.Evaluator(spec, variables, alphas, batches, opts=opts)
    masks, entries = scoring.run_decisions(ev, scoring.decisions(spec), progress=True)
    out[f"{side}_s"] = round(time.perf_counter() - t, 1)
    out[f"{side}_compilations"] = ev.compilations
    per_part = {}
    for e in entries:  # wall time per part (its first decision includes the compile)
      per_part[e["part"]] = round(per_part.get(e["part"], 0.0) + e["seconds"], 1)
    out[f"{side}_part_s"] = per_part
    out["candidate_evaluations"] = ev.evaluations
    results[side] = (mask_ops.choice_from_masks(masks, spec.topologies()), entries)
    if args.log and len(results) == 1:
      with open(args.log, "w") as f:
        json.dump({"side": side, "decisions": entries}, f, indent=1)
  if len(results) == 2:
    (ca, ea), (cb, eb) = results["vmapped"], results["loop"]
    same_geno = all(np.array_equal(ca[p], cb[p]) for p in ca)
    diffs = [
      abs(x["metric"] - y["metric"]) / max(abs(y["metric"]), 1e-12)
      for a, b in zip(ea, eb, strict=True)
      for x, y in zip(a["candidates"], b["candidates"], strict=True)
    ]
    out["max_rel_diff"] = float(max(diffs, default=0.0))
    same_metrics = out["max_rel_diff"] <= 2e-5  # float rounding of two compiled programs
    out["identical"] = bool(same_geno and same_metrics)
    out["speedup"] = round(out["loop_s"] / out["vmapped_s"], 2)
  # A comparison means something only if the candidates' scores differ somewhere.
  entries = next(iter(results.values()))[1]
  scored = [{x["metric"] for x in e["candidates"]} for e in entries if e["candidates"]]
  out["decisions_with_distinct_scores"] = sum(len(v) > 1 for v in scored)
  print(json.dumps(out), flush=True)
  if not out["decisions_with_distinct_scores"]:
    print("error: every candidate of every decision tied: nothing was compared", file=sys.stderr)
    return 1
  if out.get("identical") is False:
    print("error: the vmapped and the loop derivations differ", file=sys.stderr)
    return 1
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
