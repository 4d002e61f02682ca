"""Training of the derived (NAS-based) network: ``train(config, genotype, data_dir, workdir)``.

``config.model.arch`` picks the model (``dlsjax/models.py``): the derived
DLS-DARTS or MMNAS network of ``genotype``, or a baseline CNN (``genotype``
None); all are trained by the same loop below.

Paper Section III-B: the derived network (``K_train`` normal cells per group,
``C_sin`` 144) is re-initialised and trained on the whole training split (both
search halves) with SGD (momentum 0.9, weight decay 1e-5, cosine to 1e-5 per
epoch), focal loss (gamma 2, alpha 1), CutMix (beta 1), crop/flip
augmentation and DropPath ramped linearly to 0.2 (``drop_path_max * epoch /
epochs`` at every epoch, as the DARTS evaluation code).

Writes to ``workdir``:

* ``config.json``, ``genotype.json`` (the trained architecture) and
  ``dataset.json`` (the dataset's description and preprocessing, so
  ``predict`` works without the dataset);
* ``run{i}/`` for each of ``runs`` seeds (``config.seed + i``):
  ``checkpoints/`` (orbax, end of every epoch and every
  ``train.checkpoint_every_steps``), ``metrics.jsonl`` (per epoch), ``tb/``.

A finished run is never retrained; ``resume=True`` continues an interrupted
one from its latest checkpoint at the exact batch.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlsjax import (
  checkpoint,
  derived_net,
  distributed,
  genotype,
  loop,
  losses,
  models,
  netspec,
  optim,
  sharding,
  tblog,
)
from dlsjax import rng as rng_lib
from dlsjax.data import builder, dataset, pipeline
from dlsjax.network import Network

log = logging.getLogger(__name__)

AXIS = sharding.AXIS
METRIC_KEYS = ("loss", "acc")


class TrainError(RuntimeError):
  """A training run that cannot start or continue (the message says why)."""


@dataclasses.dataclass(frozen=True)
class TrainHParams:
  """``config.train`` (paper Section III-B)."""

  epochs: int = 110
  steps_per_epoch: int = 1
  batch_size: int = 128
  lr: float = 2.5e-3  # not restated for training in the paper; the search value is kept
  lr_min: float = 1e-5  # cosine annealing floor
  momentum: float = 0.9
  weight_decay: float = 1e-5
  grad_clip: float = 5.0  # as the DARTS evaluation code; 0 disables
  focal_gamma: float = 2.0
  focal_alpha: float = 1.0
  drop_path_max: float = 0.2  # ramped linearly over the epochs
  aux_head: bool = False
  aux_weight: float = 0.4
  # Per-class weights of the focal loss: "none" (paper) or "balanced"
  # (n / (K * n_k) from the training split's class counts, scikit-learn's rule).
  class_weight: str = "none"  # paper: focal alpha 1 for every class
  class_weights: tuple[float, ...] = ()  # filled from the data when class_weight is balanced
  # Not in the paper: an exponential moving average of the weights (0: off), which the
  # validation, the saved best epoch and inference then use (``inference_variables``).
  # The decay warms up as min(ema_decay, (1 + step) / (10 + step)).
  ema_decay: float = 0.0

  @classmethod
  def from_config(cls, train_cfg, steps_per_epoch: int) -> TrainHParams:
    from dlsjax.configs import dataclass_from_config

    return dataclass_from_config(cls, train_cfg, steps_per_epoch=steps_per_epoch)

  def drop_prob(self, step):
    """DropPath probability of ``step``: ``drop_path_max * epoch / epochs`` (DARTS)."""
    epoch = step // self.steps_per_epoch
    return self.drop_path_max * epoch / self.epochs


def optimizer(h: TrainHParams) -> optax.GradientTransformation:
  schedule = optim.cosine_by_epoch(h.lr, h.lr_min, h.epochs, h.steps_per_epoch)
  return optim.sgd(
    schedule, momentum=h.momentum, weight_decay=h.weight_decay, grad_clip=h.grad_clip
  )


def make_model(config, spec: netspec.NetworkSpec, choice, h: TrainHParams, *, axis=AXIS):
  """``config.model.arch`` (the derived network or a baseline), BN synchronised over ``axis``."""
  return models.build(config, spec, choice, aux_head=h.aux_head, bn_axis_name=axis)


def init_state(model: Network, h: TrainHParams, rng, *, pretrained: str = "") -> dict:
  """``{"params", "batch_stats", "opt", "step"}``, one jitted call.

  ``pretrained``: an orbax checkpoint loaded over the fresh weights (baselines only).
  """
  variables = derived_net.init(model, rng)
  if pretrained:
    from dlsjax import baselines

    variables, _ = baselines.load_pretrained(variables, pretrained)
  state = {
    **variables,
    "opt": jax.jit(optimizer(h).init)(variables["params"]),
    "step": jnp.zeros((), jnp.int32),
  }
  if h.ema_decay:
    state["ema"] = variables["params"]
  return state


def inference_variables(state) -> dict:
  """The model to evaluate: the weight average when ``train.ema_decay`` is on, else the weights."""
  return {"params": state.get("ema", state["params"]), "batch_stats": state["batch_stats"]}


def make_train_step(model: Network, h: TrainHParams, *, axis_name: str | None = AXIS):
  """``step(state, batch, rng) -> (state, metrics)`` for one device (gradients ``pmean``-ed)."""
  tx = optimizer(h)
  schedule = optim.cosine_by_epoch(h.lr, h.lr_min, h.epochs, h.steps_per_epoch)

  def pmean(x):
    return sharding.pmean(x, axis_name)

  def step(state, batch, rng):
    rng = rng_lib.step_key(rng, state["step"], axis_name)
    drop = h.drop_prob(state["step"])
    # A soft (CutMix) target weighs each class's weight by its share.
    weights = batch["target"] @ jnp.asarray(h.class_weights) if h.class_weights else None

    def loss_fn(params):
      logits, stats, aux = derived_net.apply(
        model,
        {"params": params, "batch_stats": state["batch_stats"]},
        batch["images"],
        train=True,
        rngs={"dropout": rng},
        drop_prob=drop,
      )
      focal = dict(gamma=h.focal_gamma, alpha=h.focal_alpha, weights_B=weights)
      loss = losses.focal_loss(logits, batch["target"], **focal)
      if aux is not None:
        loss = loss + h.aux_weight * losses.focal_loss(aux, batch["target"], **focal)
      return loss, (logits, stats)

    (loss, (logits, stats)), g = jax.value_and_grad(loss_fn, has_aux=True)(state["params"])
    g = pmean(g)
    upd, opt = tx.update(g, state["opt"], state["params"])
    new_state = {
      "params": optax.apply_updates(state["params"], upd),
      "batch_stats": pmean(stats),
      "opt": opt,
      "step": state["step"] + 1,
    }
    if h.ema_decay:
      t = state["step"].astype(jnp.float32)
      d = jnp.minimum(h.ema_decay, (1.0 + t) / (10.0 + t))
      new_state["ema"] = jax.tree.map(
        lambda e, p: d * e + (1.0 - d) * p, state["ema"], new_state["params"]
      )
    # With CutMix the target is mixed; accuracy counts the dominant class.
    metrics = {
      "loss": loss,
      "acc": losses.accuracy(logits, jnp.argmax(batch["target"], -1)),
      "lr": schedule(state["step"]),
      "drop_prob": jnp.asarray(drop, jnp.float32),
    }
    return new_state, pmean(metrics)

  return step


def make_predict_fn(model: Network):
  """``predict(variables, images) -> probabilities`` (eval mode, running statistics)."""

  def predict(variables, images):
    logits, _, _ = derived_net.apply(model, variables, images, train=False)
    return jax.nn.softmax(logits.astype(jnp.float32), axis=-1)

  return predict


SELECT = ("last", "val_auc", "val_loss")


def class_weights(counts, how: str) -> tuple[float, ...]:
  """Focal-loss weight per class: ``()`` for "none", ``n / (K n_k)`` for "balanced"."""
  if how == "none":
    return ()
  if how != "balanced":
    raise TrainError(f"train.class_weight must be 'none' or 'balanced', got {how!r}")
  counts = np.asarray(counts, np.float64)
  if np.any(counts == 0):
    raise TrainError(f"train.class_weight=balanced: a class has no training example ({counts})")
  return tuple(float(x) for x in counts.sum() / (len(counts) * counts))


def val_score(labels, probs) -> dict:
  """Validation metrics of one epoch: loss (cross-entropy), acc, auc (binary for 2 classes)."""
  from dlsjax import metrics

  probs = np.asarray(probs, np.float64)
  m = metrics.classification_metrics(labels, probs)
  nll = -np.log(np.clip(probs[np.arange(len(labels)), labels], 1e-12, 1.0)).mean()
  return {
    "val_loss": float(nll),
    "val_acc": m["acc"],
    "val_auc": m.get("auc_binary", m["auc_micro"]),
  }


def is_better(select: str, score: dict, best: dict | None) -> bool:
  """Whether this epoch's val ``score`` beats ``best``; ties keep the earlier epoch."""
  if best is None:
    return True
  if select == "val_auc":  # AUC first; equal AUC: lower loss
    return (score["val_auc"], -score["val_loss"]) > (best["val_auc"], -best["val_loss"])
  return score["val_loss"] < best["val_loss"]


# ----------------------------------------------------------------------------- the job


def train_spec(config) -> netspec.NetworkSpec:
  return netspec.spec_from_config(config.model, phase="train")


def load_choice(genotype_path, spec: netspec.NetworkSpec) -> tuple[genotype.Genotype, dict]:
  from dlsjax import paths

  try:
    geno = genotype.Genotype.load(paths.local(genotype_path, "--genotype"))
    return geno, geno.to_choice(spec.topologies(), spec.op_set)
  except (OSError, genotype.GenotypeError) as e:
    raise TrainError(f"{genotype_path}: {e}") from None


def pretrained_path(config) -> str:
  """A baseline's ``pretrained`` checkpoint ("" when none or not a baseline)."""
  name = models.arch(config)
  if models.needs_genotype(name):
    return ""
  path = str(models.baseline_overrides(config, name).get("pretrained", "") or "")
  if path:
    from dlsjax import paths

    return str(paths.local(path, "--pretrained"))
  return path


def run_dirs(workdir, runs: int) -> list[pathlib.Path]:
  return [pathlib.Path(workdir) / f"run{i}" for i in range(runs)]


def train(
  config,
  genotype_path,
  data_dir,
  workdir,
  *,
  runs: int = 1,
  resume: bool = False,
  progress: bool = True,
  stop_after: int | None = None,
  on_checkpoint=None,
) -> list[pathlib.Path]:
  """Train ``runs`` seeds of the derived network; returns the run folders.

  ``stop_after`` ends the call after that many steps (tests; resume later).
  ``on_checkpoint()`` is called after every checkpoint (``paths.StagedDir.push``).
  SIGTERM saves a checkpoint and raises ``distributed.Preempted``.
  """
  from dlsjax.configs import check_keys
  from dlsjax.data.fit import fit_config

  try:
    check_keys(config)
  except ValueError as e:
    raise TrainError(str(e)) from None
  distributed.initialize(config.train.get("distributed", "auto"))
  workdir = pathlib.Path(workdir)
  name = models.arch(config)
  if models.needs_genotype(name) and genotype_path is None:
    raise TrainError("this model is derived from a search: pass --genotype SEARCH/genotype.json")
  if not models.needs_genotype(name) and genotype_path is not None:
    raise TrainError(f"model {name!r} is not searched: drop --genotype")
  ds = dataset.load(data_dir)
  config = fit_config(config, ds)
  spec = train_spec(config)
  geno, choice = None, None
  if models.needs_genotype(name):
    geno, choice = load_choice(genotype_path, spec)
  if runs < 1:
    raise TrainError(f"--runs must be >= 1, got {runs}")
  workdir.mkdir(parents=True, exist_ok=True)
  existing = sorted(p.parent.name for p in workdir.glob("run*/checkpoints"))
  if existing and not resume:
    raise TrainError(
      f"{workdir}: has training checkpoints ({', '.join(existing)}); pass --resume to continue "
      "(finished runs are kept), or use a new --workdir"
    )
  # SIGTERM is caught from here on; config.json, written next, tells a test so.
  preemption = distributed.Preemption()
  progress = progress and distributed.is_primary()  # one progress bar per job
  if distributed.is_primary():
    (workdir / "config.json").write_text(config.to_json(indent=2))
    if geno is not None:
      geno.save(workdir / "genotype.json")
    shutil.copyfile(ds.data_dir / builder.METADATA, workdir / "dataset.json")
    (workdir / "train_run.json").write_text(
      json.dumps({"data_dir": dataset.describe_location(data_dir), "runs": runs})
    )
  dirs = run_dirs(workdir, runs)
  budget = loop.Budget(stop_after)  # shared by the runs
  try:
    for i, run_dir in enumerate(dirs):
      _train_one(
        config, spec, choice, ds, run_dir, seed=int(config.seed) + i, run=(i, runs),
        progress=progress, budget=budget, on_checkpoint=on_checkpoint or (lambda: None),
        preemption=preemption,
      )  # fmt: skip
      if budget.exhausted:
        break
  finally:
    preemption.close()
  return dirs


def _train_one(
  config, spec, choice, ds, run_dir, *, seed, run, progress, budget, on_checkpoint, preemption
) -> None:
  tc = config.train
  src = ds.source("train")
  n_proc, proc = jax.process_count(), jax.process_index()
  if tc.batch_size % n_proc:
    raise TrainError(f"train.batch_size {tc.batch_size} does not split over {n_proc} processes")
  host_batch = tc.batch_size // n_proc
  steps_per_epoch = len(src) // tc.batch_size
  if steps_per_epoch < 1:
    raise TrainError(
      f"{ds.data_dir}: {len(src)} training specimens cannot fill one batch of "
      f"{tc.batch_size} (lower train.batch_size)"
    )
  h = TrainHParams.from_config(tc, steps_per_epoch)
  counts = [ds.class_counts["train"][c] for c in ds.desc.classes]
  h = dataclasses.replace(h, class_weights=class_weights(counts, h.class_weight))
  select = tc.get("select", "last")
  if select not in SELECT:
    raise TrainError(f"train.select must be one of {SELECT}, got {select!r}")
  if select != "last" and "val" not in ds.splits:
    raise TrainError(
      f"train.select={select} needs a val split; {ds.data_dir} has {list(ds.splits)} (give the "
      "manifest a val split, or set train.select=last)"
    )
  aug = pipeline.Augment.from_config(tc)
  model = make_model(config, spec, choice, h)
  runner = sharding.Runner(
    make_train_step(model, h),
    mode=tc.get("parallel", "pmap"),
    in_kinds=(sharding.REPLICATED, sharding.BATCH, sharding.HOST),
  )
  if host_batch % runner.n:
    raise TrainError(
      f"train.batch_size {tc.batch_size}: {host_batch} per process does not split over "
      f"{runner.n} local devices"
    )

  ckpt = checkpoint.Checkpoints(run_dir / "checkpoints")
  try:  # before anything compiles: a refused resume fails at once
    ckpt.check_resumable(seed, config)
  except (ValueError, distributed.DistributedError) as e:
    ckpt.close()
    raise TrainError(str(e)) from None
  best_ckpt = checkpoint.Checkpoints(run_dir / "best", max_to_keep=1) if select != "last" else None
  first_step, epoch_loop = 0, None
  try:
    # Not loaded when a checkpoint exists: resume() replaces the initial state anyway.
    pretrained = pretrained_path(config) if ckpt.latest_step() is None else ""
    model0 = make_model(config, spec, choice, h, axis=None)  # no BN axis: init, validation
    validate = _validator(model0, ds) if best_ckpt else None
    state = init_state(model0, h, rng_lib.key(seed), pretrained=pretrained)
    try:
      state, epoch, start, sums = ckpt.resume(state, seed, METRIC_KEYS)
    except (ValueError, distributed.DistributedError) as e:
      raise TrainError(str(e)) from None
    best = ckpt.meta().get("best") if ckpt.latest_step() is not None else None
    first_step = epoch * steps_per_epoch + start
    if (epoch, start) != (0, 0):
      if epoch >= h.epochs:
        log.info("%s: finished (%d epochs), kept", run_dir, epoch)
        return
      log.info(
        "%s: resuming at epoch %d, batch %d (step %d)",
        run_dir, epoch + 1, start, epoch * steps_per_epoch + start,
      )  # fmt: skip
      if proc == 0:
        checkpoint.trim_epoch_log(run_dir / "metrics.jsonl", epoch)
    writer = tblog.writer(run_dir) if proc == 0 else None
    dstate = runner.replicate(state)
    rng = rng_lib.data(seed + 1)

    def save(epoch_, batch_, sums_):
      host = runner.unreplicate(dstate)
      meta = {
        "epoch": epoch_, "batch": batch_, "sums": sums_, "seed": seed, "best": best,
        "step": int(host["step"]), **checkpoint.run_identity(config),
      }  # fmt: skip
      ckpt.save(int(host["step"]), host, meta)
      on_checkpoint()

    def batches(epoch_, start_):
      b = pipeline.train_batches(
        ds, src, batch_size=tc.batch_size, seed=seed, epoch=epoch_, aug=aug, host=(proc, n_proc)
      )
      return pipeline.iterate(b, start=start_)

    def step(batch):
      nonlocal dstate
      dstate, m = runner(dstate, runner.shard_batch(batch), rng)
      m = {k: float(v) for k, v in jax.device_get(m).items()}
      for k in METRIC_KEYS:
        sums[k] += m[k]
      return m

    def check(m, epoch_, i):
      if not math.isfinite(m["loss"]):
        raise TrainError(
          f"{run_dir}: non-finite loss at epoch {epoch_ + 1}, batch {i + 1}; the last good "
          f"checkpoint (step {ckpt.latest_step()}) is kept. Lower train.lr or check the data."
        )

    def end_epoch(epoch_, seconds, m):
      nonlocal best, sums
      record = {
        "epoch": epoch_ + 1,
        **{k: sums[k] / steps_per_epoch for k in METRIC_KEYS},
        "lr": m["lr"],
        "drop_prob": m["drop_prob"],
        "seconds": seconds,
      }
      if validate is not None:  # model selection on the val split (never the test split)
        variables = inference_variables(runner.unreplicate(dstate))
        score = validate(variables)
        record.update(score)
        if is_better(select, score, best):
          best = {"epoch": epoch_ + 1, **score}
          best_ckpt.save(epoch_ + 1, variables, best)
        record["best_epoch"] = best["epoch"]
      if proc == 0:
        with (run_dir / "metrics.jsonl").open("a") as f:
          f.write(json.dumps(record) + "\n")
        if writer is not None:
          for k in (*METRIC_KEYS, "lr", "drop_prob", "val_loss", "val_acc", "val_auc"):
            if k in record:
              writer.add_scalar(f"train/{k}", record[k], epoch_ + 1)
          writer.flush()
      sums = dict.fromkeys(METRIC_KEYS, 0.0)

    epoch_loop = loop.EpochLoop(
      epochs=h.epochs,
      steps_per_epoch=steps_per_epoch,
      batches=batches,
      step=step,
      end_epoch=end_epoch,
      save=lambda epoch_, batch_: save(epoch_, batch_, sums),
      check=check,
      every=int(tc.get("checkpoint_every_steps", 0) or 0),
      preemption=preemption,
      preempted=lambda g, e, b: distributed.Preempted(f"train {run_dir}", g, e, b, ckpt.directory),
      budget=budget,
      desc=lambda e: f"train run {run[0] + 1}/{run[1]} epoch {e + 1}/{h.epochs}",
      postfix=lambda m: dict(loss=f"{m['loss']:.3f}", acc=f"{m['acc']:.2f}"),
      progress=progress,
    )
    epoch_loop.run(epoch, start)
  finally:
    if epoch_loop is not None and epoch_loop.steps_done:
      log.info(
        "%s: ran %d steps in this call (from step %d)", run_dir, epoch_loop.steps_done, first_step
      )
    ckpt.close()
    if best_ckpt is not None:
      best_ckpt.close()


def predict_batches(predict, batches, variables_list) -> tuple[np.ndarray, np.ndarray]:
  """``(labels [N], probs [runs, N, K])`` of padded evaluation ``batches`` (padding dropped)."""
  labels, probs = [], [[] for _ in variables_list]
  for b in batches:
    keep = b["mask"]
    labels.append(b["label"][keep])
    for r, v in enumerate(variables_list):
      probs[r].append(np.asarray(predict(v, b["images"]))[keep])
  return np.concatenate(labels), np.stack([np.concatenate(p) for p in probs])


def _validator(model: Network, ds, batch_size: int = 128):
  """``validate(variables) -> val_score(...)`` on the whole val split (eval mode)."""
  src = ds.source("val")
  predict = jax.jit(make_predict_fn(model))
  batches = pipeline.eval_batches(ds, src, batch_size=min(batch_size, len(src)))

  def validate(variables):
    labels, probs = predict_batches(predict, batches, [variables])
    return val_score(labels, probs[0])

  return validate


# ----------------------------------------------------------------------------- loading


@dataclasses.dataclass
class Trained:
  """A training workdir loaded for inference: the model and each finished run's variables."""

  workdir: pathlib.Path
  config: object
  spec: netspec.NetworkSpec
  genotype: genotype.Genotype | None  # None for a baseline
  choice: dict | None
  model: Network  # no BN axis: plain inference; a baseline's module for a baseline
  variables: list[dict]  # one {"params", "batch_stats"} per run
  run_dirs: list[pathlib.Path]
  dataset_meta: dict

  def description(self):
    from dlsjax.data import folder

    return folder.Description.from_dict(self.dataset_meta["description"])

  def data_dir(self) -> str:
    """The dataset the runs were trained on (recorded by ``train``)."""
    return json.loads((self.workdir / "train_run.json").read_text())["data_dir"]

  def build_options(self) -> builder.BuildOptions:
    return builder.BuildOptions(**self.dataset_meta["options"])


def load(workdir, *, require_finished: bool = True) -> Trained:
  """Read a training workdir: config, genotype and the last checkpoint of every run."""
  import ml_collections

  workdir = pathlib.Path(workdir)
  cfg_path = workdir / "config.json"
  if not cfg_path.is_file():
    raise TrainError(f"{workdir}: not a training workdir (no config.json); run `dlsjax train`")
  config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
  spec = train_spec(config)
  geno, choice = None, None
  if models.needs_genotype(models.arch(config)):
    geno, choice = load_choice(workdir / "genotype.json", spec)
  h = TrainHParams.from_config(config.train, 1)
  model = make_model(config, spec, choice, h, axis=None)
  template = jax.eval_shape(lambda: init_state(model, h, jax.random.PRNGKey(0)))
  select = config.train.get("select", "last")
  variables, dirs = [], []
  numbered = [p for p in workdir.glob("run*") if p.name[3:].isdigit()]
  for run_dir in sorted(numbered, key=lambda p: int(p.name[3:])):
    ckpt = checkpoint.Checkpoints(run_dir / "checkpoints")
    try:
      if ckpt.latest_step() is None:
        continue
      state, meta = ckpt.restore(template)
    finally:
      ckpt.close()
    if require_finished and meta["epoch"] < int(config.train.epochs):
      raise TrainError(
        f"{run_dir}: training not finished (epoch {meta['epoch']} of {config.train.epochs}); "
        "continue it with `dlsjax train ... --resume`"
      )
    v = inference_variables(state)
    if select != "last" and (run_dir / "best").is_dir():  # the epoch chosen on the val split
      best = checkpoint.Checkpoints(run_dir / "best", max_to_keep=1)
      try:
        if best.latest_step() is not None:
          v, _ = best.restore(v)
      finally:
        best.close()
    variables.append(v)
    dirs.append(run_dir)
  if not variables:
    raise TrainError(f"{workdir}: no trained run (no run*/checkpoints); run `dlsjax train`")
  meta = json.loads((workdir / "dataset.json").read_text())
  return Trained(workdir, config, spec, geno, choice, model, variables, dirs, meta)
