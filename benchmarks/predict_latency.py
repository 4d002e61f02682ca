"""Latency of grading one specimen at the paper's training config (the intraoperative claim).

    python benchmarks/predict_latency.py [--size 256] [--specimens 10]

What ``dlsjax predict`` does per specimen after the model is loaded, with the
paper-size derived network (C_sin 144, 64x64, K_train 1, an argmax genotype
of random alphas, random weights): read the raw modality images of a specimen
folder (16-bit PNG fluorescence, RGB white light; ``--size`` pixels, written
by the synthetic generator), preprocess them with the training data's
functions, run the jitted forward at batch 1. One JSON line.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time

import numpy as np


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__)
  ap.add_argument("--size", type=int, default=256, help="raw image size in pixels")
  ap.add_argument("--specimens", type=int, default=10)
  ap.add_argument("--depthwise", default="auto", help="model.depthwise_impl (auto|xla|toeplitz)")
  args = ap.parse_args(argv)

  import jax

  from dlsjax import derived_net, runtime, supernet, train
  from dlsjax.configs import get_config
  from dlsjax.data import builder, folder, synth

  runtime.setup()
  cfg = get_config("paper_train")
  cfg.model.depthwise_impl = args.depthwise
  spec, _, model = derived_net.random_argmax_network(cfg.model)
  variables = derived_net.init(model, jax.random.PRNGKey(0))
  predict = jax.jit(train.make_predict_fn(model))
  t0 = time.perf_counter()
  jax.block_until_ready(predict(variables, supernet.dummy_images(spec, 1)))
  compile_s = time.perf_counter() - t0

  with tempfile.TemporaryDirectory() as tmp:
    synth.synthesize(tmp, specimens=args.specimens, patients=2, size=args.size)
    desc = folder.read_description(tmp)
    rows = folder.read_manifest(tmp, desc)
    opts = builder.BuildOptions.from_config(cfg.data, spec.resolution)
    times, reads, preps = [], [], []
    for row in rows:
      t0 = time.perf_counter()
      raw = folder.read_specimen(tmp, desc, row)
      t1 = time.perf_counter()
      pre = builder.preprocess_specimen(raw, desc, opts, row.specimen_id)
      t2 = time.perf_counter()
      probs = predict(variables, {k: v[None] for k, v in pre.items()})
      jax.block_until_ready(probs)
      times.append(time.perf_counter() - t0)
      reads.append(t1 - t0)
      preps.append(t2 - t1)
  print(
    json.dumps(
      {
        "name": "predict_latency_paper",
        "mean_s": round(float(np.mean(times)), 4),
        "max_s": round(float(np.max(times)), 4),
        "read_s": round(float(np.mean(reads)), 4),
        "preprocess_s": round(float(np.mean(preps)), 4),
        "forward_s": round(float(np.mean(times) - np.mean(reads) - np.mean(preps)), 4),
        "specimens": len(times),
        "raw_size": args.size,
        "compile_s": round(compile_s, 1),
        "depthwise_impl": args.depthwise,
        "params_m": round(sum(x.size for x in jax.tree.leaves(variables["params"])) / 1e6, 2),
        "backend": jax.default_backend(),
        "machine": platform.machine(),
      }
    )
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
