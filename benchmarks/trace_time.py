"""Seconds to trace (no compile) the search state's init and the search step.

    python benchmarks/trace_time.py [--config darts_cifar] [--order first|second]

Tracing runs in Python on every new process before XLA compiles anything (the
persistent compilation cache does not skip it), so it is part of every
search's start-up and of ``compile_s`` in ``search_throughput.py``. Prints one
JSON line with ``init_trace_s`` (``jax.eval_shape`` of ``bilevel.init_state``)
and ``step_trace_s`` (``jax.make_jaxpr`` of the per-device step with the
device axis bound).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from dlsjax import bilevel, configs, runtime, sharding
from dlsjax.configs import load as load_config
from dlsjax.netspec import spec_from_config


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--config", default="darts_cifar")
  ap.add_argument("--order", choices=["first", "second"], default="first")
  argv, overrides = configs.split_flags(sys.argv[1:] if argv is None else argv)
  args = ap.parse_args(argv)  # and --config.KEY=VALUE: config overrides
  runtime.setup("off")
  cfg = load_config(args.config, overrides)
  spec = spec_from_config(cfg.model, phase="search")
  h = bilevel.SearchHParams.from_config(cfg.search, steps_per_epoch=1000)
  h = bilevel.SearchHParams(**{**h.__dict__, "order": args.order})
  t = time.perf_counter()
  state = jax.eval_shape(lambda: bilevel.init_state(spec, h, jax.random.PRNGKey(0)))
  init_s = time.perf_counter() - t
  b, r = cfg.search.batch_size, spec.resolution
  batch = {
    "images": {
      m.name: jax.ShapeDtypeStruct((b, r, r, m.channels), np.float32) for m in spec.modalities
    },
    "label": jax.ShapeDtypeStruct((b,), np.int32),
    "target": jax.ShapeDtypeStruct((b, spec.num_classes), np.float32),
  }
  step = bilevel.make_search_step(spec, h)
  t = time.perf_counter()
  jax.make_jaxpr(step, axis_env=[(sharding.AXIS, 1)])(state, batch, batch, jax.random.PRNGKey(1))
  step_s = time.perf_counter() - t
  out = {"config": args.config, "order": args.order, "init_trace_s": round(init_s, 1),
         "step_trace_s": round(step_s, 1)}  # fmt: skip
  print(json.dumps(out))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
