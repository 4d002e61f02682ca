"""The architecture search job: ``search(config, data_dir, workdir)``.

Writes to ``workdir``:

* ``config.json``: the config the run used;
* ``metrics.jsonl``: one line per epoch (train/val loss and accuracy, weight
  lr, softmaxed alphas of every part);
* ``tb/``: TensorBoard scalars;
* ``checkpoints/``: orbax checkpoints (end of every epoch, and every
  ``search.checkpoint_every_steps`` steps, and at the step every process
  agrees on after SIGTERM) with the full state and the data position, so
  ``resume=True`` continues exactly where the run stopped;
* ``alphas.npz``, ``alphas.png`` (heatmaps), ``genotype_argmax.json`` at the end.
"""

from __future__ import annotations

import json
import logging
import math
import pathlib

import jax
import numpy as np

from dlsjax import bilevel, checkpoint, distributed, genotype, loop, netspec, plots, sharding, tblog
from dlsjax import rng as rng_lib
from dlsjax.configs import check_keys
from dlsjax.data import dataset, pipeline
from dlsjax.data.fit import fit_config

log = logging.getLogger(__name__)

METRIC_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")


class SearchError(RuntimeError):
  """A search that cannot start or continue (the message says why and what to do)."""


class _SeedRun:
  """One search of a (possibly vmapped) job: its seed, folder, data halves and checkpoints."""

  def __init__(self, config, seed: int, workdir: pathlib.Path, n_train: int):
    self.seed, self.workdir = seed, workdir
    self.config = config.copy_and_resolve_references()
    self.config.seed = seed
    self.w_idx, self.a_idx = pipeline.search_halves(n_train, seed)
    workdir.mkdir(parents=True, exist_ok=True)
    self.ckpt = checkpoint.Checkpoints(workdir / "checkpoints")
    self.sums = dict.fromkeys(METRIC_KEYS, 0.0)
    self.writer = None

  def batches(self, ds, src, epoch, start, *, batch_size, aug, shard):
    wb = pipeline.train_batches(
      ds, src, self.w_idx, batch_size=batch_size, seed=self.seed, epoch=epoch, aug=aug, host=shard
    )
    ab = pipeline.train_batches(
      ds, src, self.a_idx, batch_size=batch_size, seed=self.seed + 7919, epoch=epoch, aug=aug,
      host=shard,
    )  # fmt: skip
    return pipeline.iterate(wb, start=start), pipeline.iterate(ab, start=start)


def stack_trees(trees, axis: int = 0):
  """Host copies of same-shaped pytrees, stacked leaf by leaf along a new ``axis``."""
  return jax.tree.map(lambda *xs: np.stack([np.asarray(x) for x in xs], axis=axis), *trees)


def vmap_seeds(step):
  """The search step over a seed axis: state and rng seed-first, batches ``[B, seeds, ...]``.

  Batches carry the seed axis second so that the leading batch axis still splits over
  the devices (``sharding.Layout.shard_batch``).
  """
  return jax.vmap(step, in_axes=(0, 1, 1, 0))


def search(
  config,
  data_dir,
  workdir,
  *,
  seeds: int | None = None,
  resume: bool = False,
  progress: bool = True,
  stop_after: int | None = None,
  on_checkpoint=None,
) -> dict:
  """Run (or resume) the search; returns the final state on the host.

  ``seeds=N`` runs the searches of seeds ``0..N-1`` as one ``jax.vmap`` over
  their states and data (one compiled step, one process): ``workdir/seed{k}``
  holds what ``search`` with ``config.seed = k`` and ``workdir=workdir/seed{k}``
  writes alone, and the returned state has a leading seed axis.
  ``stop_after`` ends the run after that many steps in this call, without a
  checkpoint of its own, like a kill (for tests and benchmarks; a later
  ``resume`` continues from the last checkpoint). ``on_checkpoint()`` is called
  after every checkpoint and at the end (``paths.StagedDir.push`` uploads a
  remote workdir). SIGTERM saves a checkpoint and raises
  ``distributed.Preempted``.
  """
  try:
    check_keys(config)
  except ValueError as e:
    raise SearchError(str(e)) from None
  distributed.initialize(config.search.get("distributed", "auto"))
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  on_checkpoint = on_checkpoint or (lambda: None)
  progress = progress and distributed.is_primary()  # one progress bar per job
  if seeds is not None and seeds < 1:
    raise SearchError(f"--seeds must be >= 1, got {seeds}")
  ds = dataset.load(data_dir)
  config = fit_config(config, ds)
  spec = netspec.spec_from_config(config.model, phase="search")
  sc = config.search

  src = ds.source("train")
  if seeds is None:
    runs = [_SeedRun(config, int(config.seed), workdir, len(src))]
  else:
    runs = [_SeedRun(config, k, workdir / f"seed{k}", len(src)) for k in range(seeds)]
  vmapped = seeds is not None
  n_proc, proc = jax.process_count(), jax.process_index()
  if sc.batch_size % n_proc:
    raise SearchError(f"search.batch_size {sc.batch_size} does not split over {n_proc} processes")
  host_batch = sc.batch_size // n_proc
  w_idx, a_idx = runs[0].w_idx, runs[0].a_idx  # every seed's halves have these sizes
  steps_per_epoch = min(len(w_idx), len(a_idx)) // sc.batch_size
  if steps_per_epoch < 1:
    raise SearchError(
      f"{ds.data_dir}: the search halves ({len(w_idx)} and {len(a_idx)} specimens) "
      f"cannot fill one batch of {sc.batch_size}"
    )
  h = bilevel.SearchHParams.from_config(sc, steps_per_epoch)
  aug = pipeline.Augment.from_config(sc)  # crop and flips; no CutMix in the search
  step = bilevel.make_search_step(spec, h)
  if vmapped:
    step = vmap_seeds(step)
  runner = sharding.Runner(step, mode=sc.get("parallel", "pmap"))
  if host_batch % runner.n:
    raise SearchError(
      f"search.batch_size {sc.batch_size}: {host_batch} per process does not split over "
      f"{runner.n} local devices"
    )

  for r in runs:  # before anything compiles: a refused resume fails at once
    if r.ckpt.latest_step() is not None and not resume:
      raise SearchError(
        f"{r.workdir}: has search checkpoints (step {r.ckpt.latest_step()}); pass --resume to "
        "continue, or use a new --workdir"
      )
    try:
      r.ckpt.check_resumable(r.seed, r.config)
    except (ValueError, distributed.DistributedError) as e:
      raise SearchError(str(e)) from None
  positions, states = [], []
  for r in runs:
    state = bilevel.init_state(spec, h, rng_lib.key(r.seed))
    had_checkpoint = r.ckpt.latest_step() is not None
    try:
      state, epoch, start, r.sums = r.ckpt.resume(state, r.seed, METRIC_KEYS)
    except (ValueError, distributed.DistributedError) as e:
      raise SearchError(str(e)) from None
    if had_checkpoint:
      log.info("resuming at epoch %d, batch %d (step %d)", epoch + 1, start, int(state["step"]))
      if proc == 0 and checkpoint.trim_epoch_log(r.workdir / "metrics.jsonl", epoch):
        log.info(
          "metrics.jsonl: dropped the records after epoch %d (redone from the checkpoint)", epoch
        )
    elif resume:
      log.info("%s: no checkpoint, starting a new search", r.workdir)
    positions.append((epoch, start))
    states.append(state)
  if len(set(positions)) > 1:
    raise SearchError(
      f"{workdir}: the seeds' checkpoints are at different positions "
      f"({dict(zip((r.workdir.name for r in runs), positions, strict=True))}); resume each "
      "seed alone (dlsjax search --config.seed=K --workdir W/seedK --resume)"
    )
  epoch, start = positions[0]
  # SIGTERM is caught from here on; config.json, written next, tells a test so.
  preemption = distributed.Preemption()
  if proc == 0:
    for r in runs:
      (r.workdir / "config.json").write_text(r.config.to_json(indent=2))
      (r.workdir / "search_run.json").write_text(
        json.dumps({"data_dir": dataset.describe_location(data_dir)})
      )
      r.writer = tblog.writer(r.workdir)

  rngs = [rng_lib.data(r.seed + 1) for r in runs]
  if vmapped:
    dstate, rng = runner.replicate(stack_trees(states)), stack_trees(rngs)
  else:
    dstate, rng = runner.replicate(states[0]), rngs[0]
  first_step = epoch * steps_per_epoch + start

  def per_seed(tree, k: int):
    return jax.tree.map(lambda x: x[k], tree) if vmapped else tree

  def save(epoch_, batch_):
    host = runner.unreplicate(dstate)
    for k, r in enumerate(runs):
      state_k = per_seed(host, k)
      meta = {
        "epoch": epoch_,
        "batch": batch_,
        "sums": r.sums,
        "seed": r.seed,
        "step": int(state_k["step"]),
        **checkpoint.run_identity(r.config),
      }
      r.ckpt.save(int(state_k["step"]), state_k, meta)
    on_checkpoint()
    return host

  def batches(epoch_, start_):
    iters = [
      r.batches(ds, src, epoch_, start_, batch_size=sc.batch_size, aug=aug, shard=(proc, n_proc))
      for r in runs
    ]
    while True:
      pairs = [(next(it_w), next(it_a)) for it_w, it_a in iters]
      if vmapped:
        yield tuple(stack_trees(half, axis=1) for half in zip(*pairs, strict=True))
      else:
        yield pairs[0]

  def step(tb_vb):
    nonlocal dstate
    tb, vb = tb_vb
    dstate, m = runner(dstate, runner.shard_batch(tb), runner.shard_batch(vb), rng)
    m = jax.device_get(m)
    ms = [{k: float(np.asarray(v).reshape(-1)[j]) for k, v in m.items()} for j in range(len(runs))]
    for r, mk in zip(runs, ms, strict=True):
      for k in METRIC_KEYS:
        r.sums[k] += mk[k]
    return ms

  def check(ms, epoch_, i):
    for r, mk in zip(runs, ms, strict=True):
      if not all(math.isfinite(mk[k]) for k in ("train_loss", "val_loss")):
        raise SearchError(
          f"{r.workdir}: non-finite loss at epoch {epoch_ + 1}, batch {i + 1} (global step "
          f"{epoch_ * steps_per_epoch + i + 1}): train_loss={mk['train_loss']}, "
          f"val_loss={mk['val_loss']}. The last good checkpoint (step "
          f"{r.ckpt.latest_step()}) is kept in {r.ckpt.directory}; lower search.w_lr / "
          "search.alpha_lr or check the data."
        )

  def postfix(ms):
    mean = {k: float(np.mean([mk[k] for mk in ms])) for k in METRIC_KEYS}
    return dict(
      loss=f"{mean['train_loss']:.3f}", acc=f"{mean['train_acc']:.2f}",
      val_loss=f"{mean['val_loss']:.3f}", val_acc=f"{mean['val_acc']:.2f}",
    )  # fmt: skip

  def end_epoch(epoch_, seconds, ms):
    alphas = runner.unreplicate(dstate["alphas"])
    for k, r in enumerate(runs):
      record = {
        "epoch": epoch_ + 1,
        **{key: r.sums[key] / steps_per_epoch for key in METRIC_KEYS},
        "w_lr": ms[k]["w_lr"],
        "seconds": seconds,
        "alphas": {
          p: w.round(5).tolist() for p, w in genotype.softmax_weights(per_seed(alphas, k)).items()
        },
      }
      if proc == 0:
        with (r.workdir / "metrics.jsonl").open("a") as f:
          f.write(json.dumps(record) + "\n")
        if r.writer is not None:
          for key in (*METRIC_KEYS, "w_lr"):
            r.writer.add_scalar(f"search/{key}", record[key], epoch_ + 1)
          r.writer.flush()
      r.sums = dict.fromkeys(METRIC_KEYS, 0.0)

  def preempted(global_step, epoch_, batch_):
    where = runs[0].ckpt.directory if not vmapped else workdir
    return distributed.Preempted("search", global_step, epoch_, batch_, where)

  epoch_loop = loop.EpochLoop(
    epochs=h.epochs,
    steps_per_epoch=steps_per_epoch,
    batches=batches,
    step=step,
    end_epoch=end_epoch,
    save=save,
    check=check,
    every=int(sc.get("checkpoint_every_steps", 0) or 0),
    preemption=preemption,
    preempted=preempted,
    budget=loop.Budget(stop_after),
    save_when_spent=False,  # stop_after stands in for a kill (tests, benchmarks)
    desc=lambda e: f"search epoch {e + 1}/{h.epochs}",
    postfix=postfix,
    progress=progress,
  )
  try:
    epoch_loop.run(epoch, start)
    if epoch_loop.budget.exhausted:
      return runner.unreplicate(dstate)
  finally:
    log.info("search: ran %d steps in this call (from step %d)", epoch_loop.steps_done, first_step)
    preemption.close()
    for r in runs:
      if r.writer is not None:
        r.writer.close()
      r.ckpt.close()

  host = runner.unreplicate(dstate)
  if proc == 0:
    for k, r in enumerate(runs):
      write_outputs(r.workdir, spec, per_seed(host["alphas"], k))
  on_checkpoint()
  return host


def write_outputs(workdir: pathlib.Path, spec: netspec.NetworkSpec, alphas) -> None:
  """``alphas.npz``, the heatmap ``alphas.png`` and the DARTS argmax genotype."""
  alphas = {p: np.asarray(a) for p, a in alphas.items()}
  np.savez(workdir / "alphas.npz", **alphas)
  topos = spec.topologies()
  plots.alpha_heatmaps(
    genotype.softmax_weights(alphas),
    spec.op_set,
    topos,
    workdir / "alphas.png",
    title="softmax(alpha)",
  )
  choice = genotype.derive_argmax(alphas, topos, spec.op_set)
  genotype.Genotype.from_choice(choice, topos, spec.op_set).save(workdir / "genotype_argmax.json")
