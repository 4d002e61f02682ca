"""Compile time, HLO size and step time of the supernet's forward+backward.

    python benchmarks/supernet_compile.py --config darts_cifar --batch 64
    python benchmarks/supernet_compile.py --config paper --batch 16

Prints one JSON line: trace/lower and compile seconds of the jitted init and
of ``value_and_grad`` w.r.t. weights and alphas (train mode, DropPath on),
the number of StableHLO lines and convolutions, and seconds per step. The
persistent compilation cache is off so that compile times are real.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time

os.environ.setdefault("DLSJAX_CACHE_DIR", "off")

import jax  # noqa: E402

from dlsjax import configs, netspec, runtime, supernet  # noqa: E402
from dlsjax.configs import load as load_config  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="darts_cifar")
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--steps", type=int, default=3)
  argv, overrides = configs.split_flags(sys.argv[1:])
  args = ap.parse_args(argv)  # and --config.KEY=VALUE: config overrides
  runtime.setup()
  cfg = load_config(args.config, overrides)
  spec = netspec.spec_from_config(cfg.model, phase="search")
  model = supernet.make_supernet(spec)
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(1))
  masks = supernet.init_masks(spec)
  images = supernet.dummy_images(spec, args.batch)
  out = {"name": f"{args.config}_grad", "batch": args.batch, "backend": jax.default_backend()}

  t = time.perf_counter()
  lowered = jax.jit(lambda r: model.init({"params": r}, images, alphas, masks, train=True)).lower(
    jax.random.PRNGKey(0)
  )
  out["init_lower_s"] = round(time.perf_counter() - t, 1)
  t = time.perf_counter()
  variables = lowered.compile()(jax.random.PRNGKey(0))
  out["init_compile_s"] = round(time.perf_counter() - t, 1)

  def loss(params, stats, alphas):
    logits, stats = supernet.apply(
      {"params": params, "batch_stats": stats},
      images,
      alphas,
      masks,
      spec=spec,
      train=True,
      rngs={"dropout": jax.random.PRNGKey(3)},
      drop_prob=0.2,
    )
    return logits.mean(), stats

  grad = jax.jit(jax.value_and_grad(loss, argnums=(0, 2), has_aux=True))
  args_ = (variables["params"], variables["batch_stats"], alphas)
  t = time.perf_counter()
  lowered = grad.lower(*args_)
  out["grad_lower_s"] = round(time.perf_counter() - t, 1)
  text = lowered.as_text()
  out["hlo_lines"] = len(text.splitlines())
  out["hlo_convolutions"] = text.count("convolution(")
  t = time.perf_counter()
  compiled = lowered.compile()
  out["grad_compile_s"] = round(time.perf_counter() - t, 1)
  jax.block_until_ready(compiled(*args_))
  t = time.perf_counter()
  for _ in range(args.steps):
    jax.block_until_ready(compiled(*args_))
  step = (time.perf_counter() - t) / args.steps
  out["grad_step_s"] = round(step, 3)
  out["images_per_s"] = round(args.batch / step, 2)
  out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  main()
