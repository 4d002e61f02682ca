"""Orbax checkpoints of a run: a state pytree plus JSON metadata per step.

Several processes: the state is replicated (every process holds all of it, see
``sharding.Layout.unreplicate``); every process calls ``save`` and ``restore``,
as orbax requires, and orbax writes the arrays and the metadata from process 0
only. The metadata records the job's shape and config (:func:`run_identity`),
and a resume under another shape or config is refused (:meth:`Checkpoints.resume`).
"""

from __future__ import annotations

import json
import os
import pathlib

import jax
import numpy as np
import orbax.checkpoint as ocp

from dlsjax import distributed

# Config fields that may change between a run and its resume (they do not change the result).
RESUME_FREE_FIELDS = ("distributed", "checkpoint_every_steps", "parallel")


class Checkpoints:
  """``save(step, state, meta)`` / ``restore(template) -> (state, meta)`` under ``directory``.

  Saves are synchronous (a run killed right after ``save`` returns keeps the
  checkpoint) and atomic (orbax writes into a temporary folder and renames).
  """

  def __init__(self, directory: str | pathlib.Path, *, max_to_keep: int = 2):
    self.directory = pathlib.Path(directory).resolve()  # remote workdirs: paths.StagedDir
    self._mgr = ocp.CheckpointManager(
      self.directory,
      options=ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, enable_async_checkpointing=False, create=True
      ),
    )

  def latest_step(self) -> int | None:
    return self._mgr.latest_step()

  def save(self, step: int, state, meta: dict) -> None:
    state = jax.tree.map(np.asarray, state)
    self._mgr.save(
      step,
      args=ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)),
      force=True,
    )
    self._mgr.wait_until_finished()

  def restore(self, template, step: int | None = None):
    """The state (shaped like ``template``) and metadata of ``step`` (default: latest).

    ``template`` may hold arrays or ``jax.ShapeDtypeStruct`` leaves (``jax.eval_shape``).
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint")
    abstract = jax.tree.map(
      lambda x: (
        jax.ShapeDtypeStruct(x.shape, x.dtype)
        if hasattr(x, "dtype")
        else jax.ShapeDtypeStruct(np.shape(x), np.asarray(x).dtype)
      ),
      template,
    )
    out = self._mgr.restore(
      step,
      args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
      ),
    )
    return out["state"], out["meta"]

  def check_resumable(self, seed: int, config=None) -> None:
    """Refuse the latest checkpoint if it is of another seed, job shape or ``config``.

    Reads the metadata only, so a run can call it before compiling anything.
    """
    if self.latest_step() is not None:
      self._refuse_other_run(self.meta(), seed, config)

  def _refuse_other_run(self, meta: dict, seed: int, config) -> None:
    if meta.get("seed") != seed:
      raise ValueError(f"{self.directory}: checkpoint has seed {meta.get('seed')}, this run {seed}")
    distributed.check_job_shape(meta, self.directory)
    if config is not None and "config" in meta:
      differ = config_diff(meta["config"], flat_config(config))
      if differ:
        raise ValueError(
          f"{self.directory}: the checkpoint was written with another config ("
          + "; ".join(f"{k}: {a!r} then, {b!r} now" for k, (a, b) in differ.items())
          + "). Resume with the same settings, or start a new --workdir."
        )

  def resume(self, state, seed: int, sum_keys, *, config=None):
    """``(state, epoch, batch, sums)`` of the latest checkpoint, or of a fresh start.

    A run's checkpoints carry ``epoch``, ``batch`` (position in the epoch),
    ``sums`` (running metric sums of the epoch), ``seed`` and
    :func:`run_identity` in their metadata; a checkpoint of another seed, job
    shape or ``config`` (when given; a caller that ran :meth:`check_resumable`
    first need not) is an error naming what differs, not a silent restart.
    """
    if self.latest_step() is None:
      return state, 0, 0, dict.fromkeys(sum_keys, 0.0)
    state, meta = self.restore(state)
    self._refuse_other_run(meta, seed, config)
    return state, meta["epoch"], meta["batch"], meta["sums"]

  def meta(self, step: int | None = None) -> dict:
    """The JSON metadata of ``step`` (default: latest) without reading the state."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"{self.directory}: no checkpoint")
    out = self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    return out["meta"]

  def close(self) -> None:
    self._mgr.close()


def flat_config(config) -> dict:
  """``{"search.w_lr": 0.025, ...}``: the config's leaves, as JSON values."""
  out = {}

  def walk(node, prefix):
    for k, v in node.items():
      if isinstance(v, dict):
        walk(v, f"{prefix}{k}.")
      else:
        out[f"{prefix}{k}"] = v

  walk(json.loads(config.to_json()), "")
  return out


def config_diff(saved: dict, now: dict) -> dict:
  """``{field: (saved, now)}`` for the fields that differ, ignoring :data:`RESUME_FREE_FIELDS`.

  Only fields in both count: a field added to dlsjax after the run was written (or
  removed since) does not stop its resume.
  """
  keys = sorted(set(saved) & set(now))
  return {
    k: (saved.get(k), now.get(k))
    for k in keys
    if k.rsplit(".", 1)[-1] not in RESUME_FREE_FIELDS and saved.get(k) != now.get(k)
  }


def run_identity(config) -> dict:
  """Checkpoint metadata that a resume must match: the job's shape and the flat config."""
  return {"job": distributed.job_shape(), "config": flat_config(config)}


def trim_epoch_log(path: str | pathlib.Path, completed_epochs: int) -> int:
  """Drop the records of ``path`` (JSON lines with ``epoch``) past ``completed_epochs``.

  A run killed between writing an epoch's record and committing that epoch's
  checkpoint resumes before the epoch and would record it twice; the resumed
  run calls this with the checkpoint's epoch first. Returns the number of
  records dropped; the file is replaced atomically.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    return 0
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  keep = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:  # a record cut off by the kill
      continue
    if int(record.get("epoch", 0)) <= completed_epochs:
      keep.append(line)
  dropped = len(lines) - len(keep)
  if dropped:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text("".join(line + "\n" for line in keep))
    os.replace(tmp, path)
  return dropped
