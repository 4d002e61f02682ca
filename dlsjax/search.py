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
import time

import jax
import numpy as np

from dlsjax import bilevel, checkpoint, distributed, genotype, netspec, plots, sharding, tblog
from dlsjax.data import dataset, pipeline
from dlsjax.data.fit import fit_config

log = logging.getLogger(__name__)

METRIC_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc")


class SearchError(RuntimeError):
  """A search that cannot start or continue (the message says why and what to do)."""


def search(
  config,
  data_dir,
  workdir,
  *,
  resume: bool = False,
  progress: bool = True,
  stop_after: int | None = None,
  on_checkpoint=None,
) -> dict:
  """Run (or resume) the search; returns the final state on the host.

  ``stop_after`` ends the run after that many steps in this call (for tests
  and benchmarks; a later ``resume`` continues). ``on_checkpoint()`` is called
  after every checkpoint and at the end (``paths.StagedDir.push`` uploads a
  remote workdir). SIGTERM saves a checkpoint and raises
  ``distributed.Preempted``.
  """
  distributed.initialize(config.search.get("distributed", "auto"))
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  on_checkpoint = on_checkpoint or (lambda: None)
  progress = progress and distributed.is_primary()  # one progress bar per job
  ds = dataset.load(data_dir)
  config = fit_config(config, ds)
  spec = netspec.spec_from_config(config.model, phase="search")
  seed = int(config.seed)
  sc = config.search

  src = ds.source("train")
  w_idx, a_idx = pipeline.search_halves(len(src), seed)
  n_proc, proc = jax.process_count(), jax.process_index()
  if sc.batch_size % n_proc:
    raise SearchError(f"search.batch_size {sc.batch_size} does not split over {n_proc} processes")
  host_batch = sc.batch_size // n_proc
  steps_per_epoch = min(len(w_idx), len(a_idx)) // sc.batch_size
  if steps_per_epoch < 1:
    raise SearchError(
      f"{ds.data_dir}: the search halves ({len(w_idx)} and {len(a_idx)} specimens) "
      f"cannot fill one batch of {sc.batch_size}"
    )
  h = bilevel.SearchHParams.from_config(sc, steps_per_epoch)
  aug = pipeline.Augment.from_config(sc)  # crop and flips; no CutMix in the search
  runner = sharding.Runner(bilevel.make_search_step(spec, h), mode=sc.get("parallel", "pmap"))
  if host_batch % runner.n:
    raise SearchError(
      f"search.batch_size {sc.batch_size}: {host_batch} per process does not split over "
      f"{runner.n} local devices"
    )

  ckpt = checkpoint.Checkpoints(workdir / "checkpoints")
  if ckpt.latest_step() is not None and not resume:
    raise SearchError(
      f"{workdir}: has search checkpoints (step {ckpt.latest_step()}); pass --resume to "
      "continue, or use a new --workdir"
    )
  state = bilevel.init_state(spec, h, jax.random.PRNGKey(seed))
  had_checkpoint = ckpt.latest_step() is not None
  try:
    state, epoch, start, sums = ckpt.resume(state, seed, METRIC_KEYS, config=config)
  except (ValueError, distributed.DistributedError) as e:
    raise SearchError(str(e)) from None
  if had_checkpoint:
    log.info("resuming at epoch %d, batch %d (step %d)", epoch + 1, start, int(state["step"]))
    if proc == 0 and checkpoint.trim_epoch_log(workdir / "metrics.jsonl", epoch):
      log.info(
        "metrics.jsonl: dropped the records after epoch %d (redone from the checkpoint)", epoch
      )
  elif resume:
    log.info("%s: no checkpoint, starting a new search", workdir)
  # SIGTERM is caught from here on; config.json, written next, tells a test so.
  preemption = distributed.Preemption()
  if proc == 0:
    (workdir / "config.json").write_text(config.to_json(indent=2))
    (workdir / "search_run.json").write_text(
      json.dumps({"data_dir": dataset.describe_location(data_dir)})
    )

  writer = tblog.writer(workdir) if proc == 0 else None
  every = int(sc.get("checkpoint_every_steps", 0) or 0)
  dstate = runner.replicate(state)
  rng = jax.random.PRNGKey(seed + 1)
  steps_done, first_step = 0, epoch * steps_per_epoch + start

  def save(epoch_, batch_, sums_):
    host = runner.unreplicate(dstate)
    meta = {
      "epoch": epoch_,
      "batch": batch_,
      "sums": sums_,
      "seed": seed,
      "step": int(host["step"]),
      **checkpoint.run_identity(config),
    }
    ckpt.save(int(host["step"]), host, meta)
    on_checkpoint()
    return host

  try:
    while epoch < h.epochs:
      shard = (proc, n_proc)
      wb = pipeline.train_batches(
        ds, src, w_idx, batch_size=sc.batch_size, seed=seed, epoch=epoch, aug=aug, host=shard
      )
      ab = pipeline.train_batches(
        ds, src, a_idx, batch_size=sc.batch_size, seed=seed + 7919, epoch=epoch, aug=aug, host=shard
      )
      it_w, it_a = pipeline.iterate(wb, start=start), pipeline.iterate(ab, start=start)
      bar = range(start, steps_per_epoch)
      if progress:
        from tqdm import tqdm

        bar = tqdm(
          bar, desc=f"search epoch {epoch + 1}/{h.epochs}", initial=start, total=steps_per_epoch
        )
      t0 = time.perf_counter()
      for i in bar:
        tb, vb = next(it_w), next(it_a)
        dstate, m = runner(dstate, runner.shard_batch(tb), runner.shard_batch(vb), rng)
        m = {k: float(v) for k, v in jax.device_get(m).items()}
        if not all(math.isfinite(m[k]) for k in ("train_loss", "val_loss")):
          raise SearchError(
            f"non-finite loss at epoch {epoch + 1}, batch {i + 1} (global step "
            f"{epoch * steps_per_epoch + i + 1}): train_loss={m['train_loss']}, "
            f"val_loss={m['val_loss']}. The last good checkpoint (step {ckpt.latest_step()}) "
            f"is kept in {ckpt.directory}; lower search.w_lr / search.alpha_lr or check the data."
          )
        for k in METRIC_KEYS:
          sums[k] += m[k]
        if progress:
          bar.set_postfix(
            loss=f"{m['train_loss']:.3f}", acc=f"{m['train_acc']:.2f}",
            val_loss=f"{m['val_loss']:.3f}", val_acc=f"{m['val_acc']:.2f}",
          )  # fmt: skip
        steps_done += 1
        last_in_epoch = i + 1 == steps_per_epoch
        global_step = epoch * steps_per_epoch + i + 1
        if preemption.reached(global_step):
          save(epoch, i + 1, sums)
          raise distributed.Preempted("search", global_step, epoch, i + 1, ckpt.directory)
        if every and global_step % every == 0 and not last_in_epoch:
          save(epoch, i + 1, sums)
        if stop_after is not None and steps_done >= stop_after and not last_in_epoch:
          return runner.unreplicate(dstate)
      # End of epoch: record, checkpoint.
      n = steps_per_epoch
      record = {
        "epoch": epoch + 1,
        **{k: sums[k] / n for k in METRIC_KEYS},
        "w_lr": m["w_lr"],
        "seconds": time.perf_counter() - t0,
        "alphas": {
          p: w.round(5).tolist()
          for p, w in genotype.softmax_weights(runner.unreplicate(dstate["alphas"])).items()
        },
      }
      if proc == 0:
        with (workdir / "metrics.jsonl").open("a") as f:
          f.write(json.dumps(record) + "\n")
        if writer is not None:
          for k in (*METRIC_KEYS, "w_lr"):
            writer.add_scalar(f"search/{k}", record[k], epoch + 1)
          writer.flush()
      epoch, start, sums = epoch + 1, 0, dict.fromkeys(METRIC_KEYS, 0.0)
      host = save(epoch, 0, sums)
      if stop_after is not None and steps_done >= stop_after:
        return host
  finally:
    log.info("search: ran %d steps in this call (from step %d)", steps_done, first_step)
    preemption.close()
    if writer is not None:
      writer.close()
    ckpt.close()

  host = runner.unreplicate(dstate)
  if proc == 0:
    write_outputs(workdir, spec, host["alphas"])
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
