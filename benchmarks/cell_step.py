"""Forward+backward of one supernet cell: the unit of the search step's cost.

    python benchmarks/cell_step.py [--layout auto|NHWC|CNHW] [--no-remat] [--batch 64]
        [--schedule edge|source] [--ops none,max_pool_3x3] [--mixed]

One DARTS normal cell (4 inner nodes, 8 ops, C=16 at 32x32: the first cells of
the canonical DARTS search, batch 64) by default; ``--reduction`` for a
reduction cell; ``--ops`` for another op set (one op's share of the cost:
``--ops none,max_pool_3x3``). Gradient w.r.t. the weights and the mixing
weights, BatchNorm statistics updated; ``--mixed`` times the second-order
step's mixed product instead (``jax.jvp`` of the mixing-weight gradient in a
weight direction, as ``bilevel.mixed_product``; statistics not updated).
Prints one JSON line: compile seconds, the fastest of ``--steps`` timed calls
(ms), peak RSS (MB). A minute on a 2-core CPU, where a whole canonical step
takes several: use it to compare DAG formulations, then confirm with
``search_throughput.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

os.environ.setdefault("DLSJAX_CACHE_DIR", "off")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from dlsjax import bilevel, ops, runtime  # noqa: E402
from dlsjax.layers import OpContext  # noqa: E402
from dlsjax.network import Part  # noqa: E402
from dlsjax.topology import Topology  # noqa: E402


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--layout", default="auto", choices=["auto", "NHWC", "CNHW"])
  ap.add_argument("--no-remat", action="store_true", help="keep the scan body's intermediates")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--resolution", type=int, default=32)
  ap.add_argument("--channels", type=int, default=16)
  ap.add_argument("--reduction", action="store_true")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--schedule", default="edge", choices=["source", "edge"])
  ap.add_argument("--ops", default="", help="comma-separated op names (default: the DARTS 8)")
  ap.add_argument("--mixed", action="store_true", help="time (d2 L / dw dalpha) v instead")
  args = ap.parse_args(argv)
  runtime.setup()
  layout = args.layout
  if layout == "auto":
    layout = "CNHW" if jax.default_backend() == "cpu" else "NHWC"
  topo = Topology(2, 4)
  C, B, R = args.channels, args.batch, args.resolution
  part = Part(
    topo,
    tuple(args.ops.split(",")) if args.ops else ops.DARTS8,
    C=2 * C if args.reduction else C,
    reduction=args.reduction,
    ctx=OpContext(train=True),
    remat=not args.no_remat,
    dag_layout=layout,
    dag_schedule=args.schedule,
  )
  rng = np.random.default_rng(0)
  xs = [jnp.asarray(rng.standard_normal((B, R, R, C)), jnp.float32) for _ in range(2)]
  w = jnp.asarray(rng.random((topo.num_edges, len(part.op_set))), jnp.float32)
  v = jax.jit(lambda r: part.init({"params": r}, xs, w))(jax.random.PRNGKey(0))

  def loss(params, w):
    out, stats = part.apply(
      {"params": params, "batch_stats": v["batch_stats"]}, xs, w, mutable=["batch_stats"]
    )
    return jnp.mean(out**2), stats

  grad = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))
  if args.mixed:  # the search step's own mixed product (forward-over-reverse, its default)
    direction = jax.tree.map(lambda p: 0.01 * jnp.ones_like(p), v["params"])
    cell_loss = lambda params, w, *_: loss(params, w)  # mixed_product's loss_fn signature
    grad = jax.jit(
      lambda params, w: bilevel.mixed_product(cell_loss, params, w, None, None, None, direction)
    )
  t = time.perf_counter()
  compiled = grad.lower(v["params"], w).compile()
  compile_s = time.perf_counter() - t
  jax.block_until_ready(compiled(v["params"], w))
  times = []
  for _ in range(args.steps):
    t = time.perf_counter()
    jax.block_until_ready(compiled(v["params"], w))
    times.append(time.perf_counter() - t)
  out = {
    "name": "reduction_cell" if args.reduction else "normal_cell",
    "layout": layout,
    "remat": not args.no_remat,
    "schedule": args.schedule,
    "measured": "mixed_product" if args.mixed else "gradient",
    "ops": list(part.op_set),
    "batch": B,
    "resolution": R,
    "channels": C,
    "compile_s": round(compile_s, 1),
    "fwd_bwd_ms": round(min(times) * 1e3),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    "backend": jax.default_backend(),
  }
  print(json.dumps(out), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
