"""Run a per-device step over devices: ``jax.pmap`` (default) or ``jax.shard_map``.

The step is written once against the named axis ``"data"``. Batches are
global; ``shard_batch`` lays them out for the chosen mode (``[D, B/D, ...]``
for pmap, ``[B, ...]`` split along the batch for shard_map), and the state is
replicated (a leading device axis under pmap).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
MODES = ("pmap", "shard_map")


def maybe_initialize_distributed(enabled: bool | str = "auto") -> None:
  """``jax.distributed.initialize()`` for multi-host runs.

  ``auto``: when the environment describes a multi-process job (a Cloud TPU
  pod slice sets ``TPU_WORKER_HOSTNAMES``/``MEGASCALE_*``; a manual cluster sets
  ``JAX_COORDINATOR_ADDRESS``). Must run before any other JAX call.
  """
  if enabled is False or enabled == "off":
    return
  env = os.environ
  multi = (
    "JAX_COORDINATOR_ADDRESS" in env
    or len(env.get("TPU_WORKER_HOSTNAMES", "").split(",")) > 1
    or "MEGASCALE_COORDINATOR_ADDRESS" in env
  )
  if enabled is True or enabled == "on" or (enabled == "auto" and multi):
    jax.distributed.initialize()


class Runner:
  """A compiled, device-mapped step ``(state, train_batch, val_batch, rng) -> (state, metrics)``."""

  def __init__(self, step_fn, *, mode: str = "pmap", devices=None, donate: bool = True):
    if mode not in MODES:
      raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
    self.mode = mode
    self.devices = list(devices) if devices is not None else jax.local_devices()
    self.n = len(self.devices)
    donate_args = (0,) if donate else ()
    if mode == "pmap":
      self._fn = jax.pmap(step_fn, axis_name=AXIS, devices=self.devices, donate_argnums=donate_args)
    else:
      self.mesh = Mesh(np.asarray(self.devices), (AXIS,))
      mapped = jax.shard_map(
        step_fn,
        mesh=self.mesh,
        in_specs=(P(), P(AXIS), P(AXIS), P()),
        out_specs=(P(), P()),
      )
      self._fn = jax.jit(mapped, donate_argnums=donate_args)

  # -- layout -----------------------------------------------------------------
  def replicate(self, tree):
    """Host state -> the layout the step takes."""
    if self.mode == "pmap":
      return jax.device_put_replicated(tree, self.devices)
    return jax.device_put(tree, NamedSharding(self.mesh, P()))

  def unreplicate(self, tree):
    """The step's state -> one host copy (numpy)."""
    if self.mode == "pmap":
      return jax.tree.map(lambda x: np.asarray(x[0]), tree)
    return jax.tree.map(np.asarray, tree)

  def shard_batch(self, batch):
    """A global batch ``[B, ...]`` (host numpy) -> the step's layout."""

    def split(x):
      x = np.asarray(x)
      if x.shape[0] % self.n:
        raise ValueError(f"global batch of {x.shape[0]} does not split over {self.n} devices")
      return x

    batch = jax.tree.map(split, batch)
    if self.mode == "pmap":
      batch = jax.tree.map(lambda x: x.reshape(self.n, -1, *x.shape[1:]), batch)
      return jax.device_put_sharded(
        [jax.tree.map(lambda x, i=i: x[i], batch) for i in range(self.n)], self.devices
      )
    return jax.device_put(batch, NamedSharding(self.mesh, P(AXIS)))

  def __call__(self, state, train_batch, val_batch, rng):
    if self.mode == "pmap":
      rng = jax.device_put_replicated(rng, self.devices)
    state, metrics = self._fn(state, train_batch, val_batch, rng)
    if self.mode == "pmap":
      metrics = jax.tree.map(lambda x: x[0], metrics)
    return state, metrics
