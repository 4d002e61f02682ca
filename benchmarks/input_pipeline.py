"""Input pipeline throughput against what a training step consumes.

    python benchmarks/input_pipeline.py [--specimens 240] [--batches 20] [--no-step]

Synthesises the default dataset, builds it twice (preprocessed at build time
and raw for on-the-fly preprocessing) and times the grain loader at the paper
configs: search batches (batch 16, crop + flips) and training batches (batch
128, crop + flips + CutMix). Then times one training step of the derived
network at the paper training config (C_sin 144, 64x64; an argmax genotype
of random alphas; batch 32 by default, as batch 128 needs ~34 GB on CPU), the
consumer the loader must outrun by >= 10x.
(The search step is slower per image: its supernet forward alone is 14.6
GFLOPs per image, see RESULTS.md.) One JSON line per measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time

import numpy as np


def time_loader(ds, split, *, batch, aug, batches, threads, workers, resolution=None):
  from dlsjax.data import pipeline

  src = ds.source(split)
  epoch, n, t0 = 0, 0, time.perf_counter()
  while n < batches:
    data = pipeline.train_batches(
      ds, src, batch_size=batch, seed=0, epoch=epoch, aug=aug, resolution=resolution
    )
    for _ in pipeline.iterate(data, threads=threads, workers=workers):
      n += 1
      if n == batches:
        break
    epoch += 1
  return batches * batch / (time.perf_counter() - t0)


def time_train_step(batch: int, steps: int = 2):
  import jax
  import jax.numpy as jnp
  import optax

  from dlsjax import derived_net, supernet
  from dlsjax.configs import get_config

  cfg = get_config("paper_train")
  spec, _, model = derived_net.random_argmax_network(cfg.model)
  variables = derived_net.init(model, jax.random.PRNGKey(0))
  tx = optax.sgd(cfg.train.lr, momentum=cfg.train.momentum)
  opt = tx.init(variables["params"])
  images = {k: jnp.asarray(np.random.rand(*v.shape), jnp.float32)
            for k, v in supernet.dummy_images(spec, batch).items()}  # fmt: skip
  labels = jnp.zeros((batch,), jnp.int32)

  @jax.jit
  def step(variables, opt, images, labels, rng):
    def loss(params):
      logits, stats, _ = derived_net.apply(
        model, {**variables, "params": params}, images, train=True,
        rngs={"drop_path": rng}, drop_prob=0.1,
      )  # fmt: skip
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), stats

    (_, stats), g = jax.value_and_grad(loss, has_aux=True)(variables["params"])
    u, opt = tx.update(g, opt, variables["params"])
    return {"params": optax.apply_updates(variables["params"], u), "batch_stats": stats}, opt

  t0 = time.perf_counter()
  compiled = step.lower(variables, opt, images, labels, jax.random.PRNGKey(0)).compile()
  compile_s = time.perf_counter() - t0
  variables, opt = compiled(variables, opt, images, labels, jax.random.PRNGKey(0))
  jax.block_until_ready(variables)
  t0 = time.perf_counter()
  for i in range(steps):
    variables, opt = compiled(variables, opt, images, labels, jax.random.PRNGKey(i))
  jax.block_until_ready(variables)
  return batch * steps / (time.perf_counter() - t0), compile_s


def emit(**record) -> None:
  print(json.dumps(record), flush=True)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--specimens", type=int, default=240)
  ap.add_argument("--batches", type=int, default=20, help="batches timed per loader measurement")
  ap.add_argument("--threads", type=int, default=4)
  ap.add_argument("--workers", type=int, default=0)
  ap.add_argument("--no-step", action="store_true", help="skip timing the training step")
  ap.add_argument(
    "--step-batch",
    type=int,
    default=32,
    help="batch of the timed training step (the paper's 128 needs ~34 GB on CPU; "
    "images/s per step barely depends on it)",
  )
  args = ap.parse_args(argv)

  from dlsjax import runtime

  runtime.setup()
  import jax

  from dlsjax.data import builder, dataset, pipeline, synth

  common = {"backend": jax.default_backend(), "cpus": os.cpu_count(), "host": platform.node()}
  with tempfile.TemporaryDirectory() as tmp:
    synth.synthesize(f"{tmp}/folder", specimens=args.specimens, patients=24, size=96)
    builder.build(f"{tmp}/folder", f"{tmp}/built", builder.BuildOptions(resolution=64))
    builder.build(
      f"{tmp}/folder", f"{tmp}/raw", builder.BuildOptions(resolution=64, preprocess="on_the_fly")
    )
    built, raw = dataset.load(f"{tmp}/built"), dataset.load(f"{tmp}/raw")
    search_aug = pipeline.Augment(crop_padding=8, hflip=True, vflip=True)
    train_aug = pipeline.Augment(crop_padding=8, hflip=True, vflip=True, cutmix_beta=1.0)
    rates = {}
    for name, ds, batch, aug in (
      ("loader_search_b16", built, 16, search_aug),
      ("loader_train_b128_cutmix", built, 128, train_aug),
      ("loader_train_b128_cutmix_on_the_fly", raw, 128, train_aug),
    ):
      batches = args.batches if batch == 16 else max(2, args.batches // 8)
      rate = time_loader(
        ds, "train", batch=batch, aug=aug, batches=batches, threads=args.threads,
        workers=args.workers,
      )  # fmt: skip
      rates[name] = rate
      emit(name=name, images_per_s=round(rate, 1), batch=batch, threads=args.threads,
           workers=args.workers, **common)  # fmt: skip
  if not args.no_step:
    rate, compile_s = time_train_step(args.step_batch)
    emit(name="train_step_paper", images_per_s=round(rate, 2), batch=args.step_batch,
         compile_s=round(compile_s, 1), **common)  # fmt: skip
    slowest = min(rates.values())
    emit(name="loader_over_step", ratio=round(slowest / rate, 1), target=10,
         ok=bool(slowest / rate >= 10), **common)  # fmt: skip
  return 0


if __name__ == "__main__":
  sys.exit(main())
