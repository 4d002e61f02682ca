"""``pt``: perturbation-based selection of Wang et al. (ICLR 2021).

The same scores as MPDS, edges and then nodes in a seeded random order over
all parts, with ``derive.pt_tune_epochs`` epochs of weight fine-tuning (SGD,
lr ``search.w_lr * derive.pt_lr_factor`` cosine-annealed over each tuning
period, alphas frozen; a dlsjax choice where the PT description is not
specific) after every decision. PT's node rule ("drop the edge whose removal
gives the highest accuracy until k remain") is applied in one round, which
keeps the same edges when removals do not interact.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dlsjax import bilevel, loop, netspec, sharding
from dlsjax import rng as rng_lib
from dlsjax.derivation import scoring
from dlsjax.derivation.base import Context, DeriveOptions, Result, register_method
from dlsjax.derivation.masks import choice_from_masks


def pt_decisions(spec: netspec.NetworkSpec, seed: int) -> list[tuple[str, str, int]]:
  """PT order: all edges of all parts in random order, then all nodes in random order."""
  rng = np.random.default_rng(seed)
  d = scoring.decisions(spec)
  edges = [x for x in d if x[1] == "edge"]
  nodes = [x for x in d if x[1] == "node"]
  return [edges[i] for i in rng.permutation(len(edges))] + [
    nodes[i] for i in rng.permutation(len(nodes))
  ]


@register_method("pt")
def run(ctx: Context) -> Result:
  tuner = PTTuner(
    ctx.config, ctx.spec, ctx.hparams, ctx.state, ctx.data_dir, ctx.opts, ctx.evaluator
  )
  masks, entries = scoring.run_decisions(
    ctx.evaluator,
    pt_decisions(ctx.spec, ctx.opts.pt_seed),
    after_each=tuner,
    progress=ctx.progress,
  )
  choice = choice_from_masks(masks, ctx.spec.topologies())
  return Result(choice, entries, {"pt_tuning_steps": tuner.steps_done})


class PTTuner:
  """PT's fine-tuning between decisions: weights only, on the weight half, masks applied."""

  def __init__(self, config, spec, h, state, data_dir, opts: DeriveOptions, ev: scoring.Evaluator):
    from dlsjax.data import dataset, pipeline

    self.ev, self.opts, self.config = ev, opts, config
    self.ds = dataset.load(data_dir)
    self.src = self.ds.source("train")
    w_idx, _ = pipeline.search_halves(len(self.src), int(config.seed))
    self.w_idx = w_idx
    self.batch = int(config.search.batch_size)
    self.steps_per_epoch = max(len(w_idx) // self.batch, 1)
    th = dataclasses.replace(
      h,
      w_lr=h.w_lr * opts.pt_lr_factor,
      w_lr_min=h.w_lr_min * opts.pt_lr_factor,
      epochs=max(opts.pt_tune_epochs, 1),
      steps_per_epoch=self.steps_per_epoch,
    )
    self.h = th
    self.tx = bilevel.weight_optimizer(th)
    self.runner = sharding.Runner(
      bilevel.make_weight_step(spec, th),
      mode=ev.layout.mode,
      devices=ev.layout.devices,
      in_kinds=(sharding.REPLICATED, sharding.BATCH, sharding.HOST, sharding.HOST),
      out_kinds=(sharding.REPLICATED, sharding.HOST),
    )
    self.params, self.stats = state["params"], state["batch_stats"]
    self.alphas = state["alphas"]
    self.aug = pipeline.Augment.from_config(config.search)
    self.round = 0
    self.steps_done = 0

  def __call__(self, masks: dict) -> None:
    from dlsjax.data import pipeline

    if self.opts.pt_tune_epochs <= 0 or len(self.w_idx) < self.batch:
      return  # nothing to tune on (fewer weight-half images than one batch)
    wstate = self.runner.replicate(
      {
        "params": self.params,
        "batch_stats": self.stats,
        "alphas": self.alphas,
        "opt_w": self.tx.init(self.params),
        "step": np.zeros((), np.int32),
      }
    )
    key = rng_lib.data(self.opts.pt_seed + 1000 * (self.round + 1))

    def batches(epoch, start):
      b = pipeline.train_batches(
        self.ds, self.src, self.w_idx, batch_size=self.batch,
        seed=self.opts.pt_seed + self.round, epoch=epoch, aug=self.aug,
      )  # fmt: skip
      return pipeline.iterate(b, start=start)

    def step(batch):
      nonlocal wstate
      wstate, _ = self.runner(wstate, self.runner.shard_batch(batch), masks, key)

    tuning = loop.EpochLoop(
      epochs=self.opts.pt_tune_epochs,
      steps_per_epoch=self.steps_per_epoch,
      batches=batches,
      step=step,
      budget=loop.Budget(self.opts.pt_tune_max_steps or None),
    )
    steps = tuning.run()
    self.steps_done += steps
    host = self.runner.unreplicate(wstate)
    self.params, self.stats = host["params"], host["batch_stats"]
    self.ev.set_weights({"params": self.params, "batch_stats": self.stats}, self.alphas)
    self.round += 1
