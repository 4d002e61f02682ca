"""Run a per-device step over devices: ``jax.pmap`` (default) or ``jax.shard_map``.

The step is written once against the named axis ``"data"``. Batches are
this process's rows of the global batch (all of it with one process);
``shard_batch`` lays them out for the chosen mode (``[D, B/D, ...]`` over the
local devices for pmap, one global array split along the batch for
shard_map), and the state is replicated (a leading device axis under pmap).

With several processes (``dlsjax.distributed``) the axis spans the devices of
all processes: pmap maps over every process's local devices, and the
shard_map mesh holds all devices, process 0's first, so device ``d`` sees the
same rows as device ``d`` of a one-process run with as many devices.
"""

from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

AXIS = "data"
MODES = ("pmap", "shard_map")


REPLICATED, BATCH, HOST, LOCAL = "replicated", "batch", "host", "local"


class Layout:
  """Where arrays live for ``mode`` over ``devices``: replicated state, split batches.

  pmap takes a leading device axis on everything; shard_map takes global
  arrays, replicated or split along the batch over the 1-D mesh ``"data"``.
  """

  def __init__(self, mode: str = "pmap", devices=None):
    if mode not in MODES:
      raise ValueError(f"parallel mode must be one of {MODES}, got {mode!r}")
    self.mode = mode
    self.multiprocess = jax.process_count() > 1
    if devices is not None and self.multiprocess:
      raise ValueError("a device subset is for one process; several processes use all devices")
    self.devices = list(devices) if devices is not None else jax.local_devices()
    self.n = len(self.devices)  # local devices: a host batch splits over these
    local_mesh = Mesh(np.asarray(self.devices), (AXIS,))
    self._stacked = NamedSharding(local_mesh, P(AXIS))  # a leading axis over local devices
    # shard_map's mesh: every device of every process (process 0's first).
    self.mesh = Mesh(np.asarray(jax.devices()), (AXIS,)) if self.multiprocess else local_mesh

  def replicate(self, tree):
    """Host state -> the layout the step takes."""
    if self.mode == "pmap":
      return self._stack(tree)
    replicated = NamedSharding(self.mesh, P())
    if not self.multiprocess:
      return jax.device_put(tree, replicated)
    return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(replicated, np.asarray(x)), tree
    )

  def _stack(self, tree):
    """One copy per device along a new leading axis (what ``jax.pmap`` takes)."""
    stacked = jax.tree.map(
      lambda x: np.broadcast_to(np.asarray(x)[None], (self.n, *np.shape(x))), tree
    )
    return jax.device_put(stacked, self._stacked)

  def unreplicate(self, tree):
    """The step's state -> one host copy (numpy)."""
    if self.mode == "pmap":
      return jax.tree.map(first_replica, tree)
    if not self.multiprocess:
      return jax.tree.map(np.asarray, tree)
    return jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), tree)

  def shard_batch(self, batch):
    """This process's batch ``[B, ...]`` (host numpy) -> the step's layout."""

    def split(x):
      x = np.asarray(x)
      if x.shape[0] % self.n:
        raise ValueError(f"global batch of {x.shape[0]} does not split over {self.n} devices")
      return x

    batch = jax.tree.map(split, batch)
    if self.mode == "pmap":
      batch = jax.tree.map(lambda x: x.reshape(self.n, -1, *x.shape[1:]), batch)
      return jax.device_put(batch, self._stacked)
    rows = NamedSharding(self.mesh, P(AXIS))
    if not self.multiprocess:
      return jax.device_put(batch, rows)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(rows, x), batch)


def first_replica(x) -> np.ndarray:
  """Device 0's copy of a ``[devices, ...]`` pmap result, as numpy.

  Read from the device buffer: ``x[0]`` would run an eager gather, and each
  new shape compiles one (a measurable share of a short search's time).
  """
  if isinstance(x, jax.Array):
    return np.asarray(x.addressable_data(0)).reshape(x.shape[1:])
  return np.asarray(x)[0]


class Runner(Layout):
  """A compiled, device-mapped per-device function (by default the search step).

  Each argument and result has a kind: ``replicated`` (already laid out with
  :meth:`replicate`, e.g. the state), ``batch`` (split along its leading axis:
  :meth:`shard_batch` for arguments; results come back as one global batch)
  or ``host`` (a small host value copied to every device at each call, e.g. an
  rng; a result of this kind is identical on every device, e.g. a ``pmean``,
  and comes back once). A ``local`` result is a batch left on the devices in
  the layout a ``batch`` argument takes, to feed a later call without a
  round trip (e.g. the cached stem outputs of a derivation). The defaults
  describe ``step(state, train_batch, val_batch, rng) -> (state, metrics)``.
  """

  def __init__(
    self,
    step_fn,
    *,
    mode: str = "pmap",
    devices=None,
    donate: bool = True,
    in_kinds: tuple[str, ...] = (REPLICATED, BATCH, BATCH, HOST),
    out_kinds: tuple[str, ...] = (REPLICATED, HOST),
  ):
    super().__init__(mode, devices)
    self.in_kinds, self.out_kinds = tuple(in_kinds), tuple(out_kinds)
    donate_args = (0,) if donate else ()
    if mode == "pmap":
      self._fn = jax.pmap(
        step_fn,
        axis_name=AXIS,
        devices=None if self.multiprocess else self.devices,
        donate_argnums=donate_args,
      )
    else:
      spec = {REPLICATED: P(), HOST: P(), BATCH: P(AXIS), LOCAL: P(AXIS)}
      mapped = jax.shard_map(
        step_fn,
        mesh=self.mesh,
        in_specs=tuple(spec[k] for k in self.in_kinds),
        out_specs=tuple(spec[k] for k in self.out_kinds),
        # The supernet's cell scans start from zero carries that do not vary
        # over "data"; with type checking of varying axes off, the collectives
        # (pmean of gradients and BN statistics) are explicit, as under pmap,
        # and tests/bilevel_test.py checks the result equals one device's.
        check_vma=False,
      )
      self._fn = jax.jit(mapped, donate_argnums=donate_args)

  def __call__(self, *args):
    if self.mode == "pmap":
      args = [self._stack(a) if k == HOST else a for a, k in zip(args, self.in_kinds, strict=True)]
    elif self.multiprocess:  # jit over several processes takes global arrays only
      kinds = self.in_kinds
      args = [self.replicate(a) if k == HOST else a for a, k in zip(args, kinds, strict=True)]
    out = self._fn(*args)
    if self.mode == "shard_map" and self.multiprocess:
      out = tuple(
        jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), o) if k == HOST else o
        for o, k in zip(out, self.out_kinds, strict=True)
      )
    if self.mode == "pmap":
      out = tuple(
        jax.tree.map(first_replica, o)
        if k == HOST
        else jax.tree.map(lambda x: x.reshape(-1, *x.shape[2:]), o)
        if k == BATCH
        else o
        for o, k in zip(out, self.out_kinds, strict=True)
      )
    return out


def pmean(x, axis_name: str | None):
  """``lax.pmean`` over ``axis_name`` inside a per-device function; ``x`` itself without one."""
  return jax.lax.pmean(x, axis_name) if axis_name else x
