"""Inference images/s of the derived paper network (paper: 504 img/s at batch 128 on a P100).

    python benchmarks/inference_throughput.py [--batch 128] [--dtype float32|bfloat16]
        [--batches 20] [--config.model.c_sin_train=16 ...]

The paper's training network (``paper_train``: C_sin 144, 64x64, K_train 1, both
stems) with the argmax genotype of seeded random alphas and freshly initialised
weights; the jitted eval-mode forward on one device, timed over ``--batches``
batches after the compile. Prints one JSON line (parameters, compile seconds,
images/s, the device's name).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from dlsjax import configs


def measure(batch: int, dtype: str, batches: int, overrides=()) -> dict:
  import jax
  import numpy as np

  from dlsjax import derived_net, genotype, runtime
  from dlsjax.configs import load as load_config
  from dlsjax.netspec import spec_from_config
  from dlsjax.network import Network

  runtime.setup()
  cfg = load_config("paper_train", [*overrides, ("model.dtype", dtype)])
  spec = spec_from_config(cfg.model, phase="train")
  rng = np.random.default_rng(0)
  alphas = {
    p: rng.normal(size=(t.num_edges, len(spec.op_set))) for p, t in spec.topologies().items()
  }
  choice = genotype.derive_argmax(alphas, spec.topologies(), spec.op_set)
  model = Network(spec, genotype=choice)
  r = spec.resolution
  images = {
    m.name: jax.device_put(rng.random((batch, r, r, m.channels), np.float32))
    for m in spec.modalities
  }
  variables = jax.jit(lambda k: model.init({"params": k}, images, train=False))(
    jax.random.PRNGKey(0)
  )
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(variables["params"]))

  @jax.jit
  def forward(v, x):
    return derived_net.apply(model, v, x, train=False)[0]

  t0 = time.perf_counter()
  forward(variables, images).block_until_ready()
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(batches):
    out = forward(variables, images)
  out.block_until_ready()
  per_batch = (time.perf_counter() - t0) / batches
  dev = jax.devices()[0]
  return {
    "name": f"derived_paper_inference_{dtype}",
    "images_per_s": round(batch / per_batch, 1),
    "batch_s": round(per_batch, 5),
    "compile_s": round(first - per_batch, 1),
    "params_m": round(params / 1e6, 3),
    "batch": batch,
    "dtype": dtype,
    "backend": jax.default_backend(),
    "device_kind": dev.device_kind,
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--batch", type=int, default=128)
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--batches", type=int, default=20, help="timed batches after the compile")
  argv, overrides = configs.split_flags(sys.argv[1:] if argv is None else argv)
  a = ap.parse_args(argv)  # and --config.KEY=VALUE: config overrides
  print(json.dumps(measure(a.batch, a.dtype, a.batches, overrides)), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
