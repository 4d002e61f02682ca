"""The DAG inside a cell or a learnable stem, for search (mixed) and derived nets.

Search (``MixedDAG``): every edge carries all operations, mixed with
per-edge weights ``w[E, K]`` (computed by the supernet from alphas and
masks). All edges that leave one source node share their input, so each
operation is evaluated for all of them in *one* ``jax.vmap`` with the
parameters stacked on a leading axis and the input broadcast: a kxk
convolution with a batched kernel and a shared input lowers to a single
convolution with ``edges * C`` outputs, and parameter-free ops (pooling,
identity) are computed once per source instead of once per edge. The sources
of a cell then run through one ``lax.scan``, so XLA compiles one body per
normal cell (two per reduction cell) instead of one graph per edge. With the
``edge`` schedule (the CPU default) the input sources are scanned that way
and the inner sources' edges one per step instead: no target slot that a
source cannot reach is evaluated (14 edge evaluations in a DARTS normal cell
instead of 20), for one more compiled body per normal cell.

Derived (``DerivedDAG``): each kept edge applies its one chosen operation.
Its parameters have exactly the structure of one slice of the search
parameters (``edge_params_from_search`` maps them), which the equivalence
test relies on.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from dlsjax import ops
from dlsjax.layers import MAX_POOL_TAP, OpContext, apply_with_stats, channel_axis, to_layout
from dlsjax.topology import Topology


class OpCall(nn.Module):
  """Applies the registered op ``op_name``; the unit the supernet vmaps over edges."""

  op_name: str
  C: int
  stride: int
  ctx: OpContext

  @nn.compact
  def __call__(self, x):
    return ops.get_op(self.op_name).build(self.C, self.stride, self.ctx)(x)


def _edge_stride(topology: Topology, reduction: bool, source: int) -> int:
  return 2 if reduction and source < topology.n_inputs else 1


def derived_param_name(edge: int) -> str:
  return f"edge{edge}"


def drop_path_mask(rng, keep_prob, shape, dtype=jnp.float32):
  """Per-sample DropPath multiplier: Bernoulli(keep) / keep, in ``dtype``."""
  keep = jax.random.bernoulli(rng, keep_prob, shape)
  return (keep.astype(jnp.float32) / keep_prob).astype(dtype)


def per_slot(coef_JB, layout: str):
  """Per-(slot, sample) coefficients ``[J, B]`` shaped to broadcast against ``[J, *node]``."""
  if layout == "NHWC":
    return coef_JB[:, :, None, None, None]
  return coef_JB[:, None, :, None, None]


def weighted_fan_out(y, coef_JB, layout: str):
  """``coef[j, b] * y`` for every slot ``j``: one shared op output mixed into ``J`` targets.

  Written as a stack of ``J`` products rather than one broadcast multiply:
  the gradient w.r.t. ``y`` is then a chain of adds, which XLA's CPU backend
  fuses into one loop, instead of a reduction over the leading axis, which it
  runs an order of magnitude slower. Plain JAX, so forward-mode autodiff
  (second order) works too.
  """
  c = per_slot(coef_JB, layout)
  return jnp.stack([c[j] * y for j in range(c.shape[0])])


def _finish(topology: Topology, inner_index: int, parts: list):
  if topology.is_concat_node(inner_index):
    return jnp.concatenate(parts, axis=-1)
  out = parts[0]
  for p in parts[1:]:
    out = out + p
  return out


def segments(topology: Topology, reduction: bool) -> tuple[tuple[int, int, int], ...]:
  """``(first source, end source, stride)`` runs of sources evaluated by one ``lax.scan``.

  All sources of a run share their input shape and stride, so one compiled
  body serves them all: a normal cell or a learnable stem is one run; a
  reduction cell is two (its inputs at stride 2, its inner nodes at stride 1).
  """
  n_in, n_src = topology.n_inputs, topology.n_inputs + topology.n_inner - 1
  if not reduction:
    return ((0, n_src, 1),)
  runs = [(0, n_in, 2)]
  if n_src > n_in:
    runs.append((n_in, n_src, 1))
  return tuple(runs)


def edge_slot(topology: Topology, reduction: bool, edge: int) -> tuple[int, int, int]:
  """Where edge ``e`` lives in the stacked search parameters: (run, source in run, target slot)."""
  source, target = topology.edges[edge]
  for r, (t0, t1, _) in enumerate(segments(topology, reduction)):
    if t0 <= source < t1:
      return r, source - t0, target - topology.n_inputs
  raise AssertionError(edge)


SCHEDULES = ("source", "edge")


def _scans(t0: int, t1: int, stride: int, n_in: int, split_inputs: bool, schedule: str = "source"):
  """``(first source, end source, reads inputs, per edge)`` per ``lax.scan`` of ``[t0, t1)``.

  A strided run holds input sources only and reads the part's inputs. With
  ``split_inputs`` a stride-1 run that starts with the input sources scans
  them separately, reading the inputs rather than the carried node tensor:
  same values, one more compiled body, and under a ``vmap`` over masks (a
  derivation scoring candidates) the operations on the inputs stay
  unbatched, i.e. they run once for all candidates instead of once each;
  a scan of inner sources only (the split-off one, or a reduction cell's
  stride-1 run) skips the target slots before its first source's successors
  (``MixedDAG``'s ``j0``).

  ``schedule`` (``MixedDAG.schedule``): ``"source"`` scans sources, each step
  evaluating every op for all target slots; ``"edge"`` splits the input
  sources off as above and scans the inner sources' edges one per step
  (``per edge`` true), so no dead slot is evaluated.
  """
  if schedule not in SCHEDULES:
    raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
  edge = schedule == "edge"
  if stride != 1:
    return ((t0, t1, True, False),)
  if (split_inputs or edge) and t0 < n_in < t1:
    return ((t0, n_in, True, False), (n_in, t1, False, edge))
  return ((t0, t1, False, edge and t0 >= n_in),)


def search_param_name(run: int, op_name: str) -> str:
  return f"run{run}_{op_name}"


def _slot_edges(topology: Topology) -> np.ndarray:
  """``int[n_sources, n_inner]``: edge number of (source, target slot), -1 where none."""
  n_src = topology.n_inputs + topology.n_inner - 1
  idx = np.full((n_src, topology.n_inner), -1, np.int64)
  for e, (s, t) in enumerate(topology.edges):
    idx[s, t - topology.n_inputs] = e
  return idx


class MixedDAG(nn.Module):
  """Search-time DAG: ``x_j = sum_i sum_k w[(i,j), k] * op_k(x_i)``.

  ``__call__(inputs, weights_EK, drop_prob)`` returns the list of inner node
  values. ``weights_EK`` already includes masks (zeroed ops/edges). DropPath
  (per sample, per edge and op, identity ops excluded) is applied when
  ``drop_path`` is set and a ``dropout`` rng is given.

  Layout: sources are processed by ``lax.scan`` over runs of equal shape
  (:func:`segments`); at each source all operations are evaluated for every
  target slot with ``jax.vmap`` (parameters stacked ``[sources, n_inner,
  ...]``, input shared). Slots of non-existent edges (target <= source) get
  zero weight: a little wasted arithmetic buys one compiled body per run,
  which keeps XLA's compile time small. Their parameters exist but never
  receive gradient; :func:`search_param_count` leaves them out.

  ``remat``: each scan step's operations run under ``jax.checkpoint``, so
  the backward pass keeps only that step's input node (not the whole carried
  node tensor) and recomputes the operations (see ``NetworkSpec.dag_remat``).

  ``schedule``: ``"source"`` or ``"edge"`` (see :func:`_scans` and
  ``NetworkSpec.dag_schedule``); same values, parameters and statistics of
  the real edges.

  ``layout``: the layout of the node tensors inside the DAG (``NHWC`` or
  channel-major ``CNHW``, see ``NetworkSpec.dag_layout``); inputs and
  outputs are NHWC either way.
  """

  topology: Topology
  op_set: tuple[str, ...]
  C: int
  reduction: bool
  ctx: OpContext
  drop_path: bool = False
  unroll: bool = False
  remat: bool = False
  layout: str = "NHWC"
  split_inputs: bool = False
  schedule: str = "source"

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], weights_EK: jax.Array, drop_prob=0.0):
    topo = self.topology
    layout = self.layout
    op_ctx = dataclasses.replace(self.ctx, layout=layout)
    n_in, n_inner = topo.n_inputs, topo.n_inner
    if len(inputs) != n_in:
      raise ValueError(f"expected {n_in} inputs, got {len(inputs)}")
    shapes = {x.shape for x in inputs}
    if len(shapes) != 1:
      raise ValueError(f"inputs of a part must share their shape, got {sorted(shapes)}")
    batch, res = inputs[0].shape[0], inputs[0].shape[1]
    in_stride = 2 if self.reduction else 1
    out_res = res // in_stride
    K = len(self.op_set)
    slot_edges = _slot_edges(topo)
    exists = jnp.asarray(slot_edges >= 0)
    safe = np.maximum(slot_edges, 0)
    w_SJK = jnp.where(exists[..., None], weights_EK[safe], 0.0)  # [src, slot, K]
    coef_SJBK = jnp.broadcast_to(w_SJK[:, :, None, :], (*w_SJK.shape[:2], batch, K))
    if self.drop_path:
      drop_BEK = drop_path_mask(
        self.make_rng("dropout"), 1.0 - drop_prob, (batch, topo.num_edges, K), weights_EK.dtype
      )
      drop_SJBK = jnp.transpose(drop_BEK[:, safe, :], (1, 2, 0, 3))
    x_in = jnp.stack([to_layout(x, "NHWC", layout) for x in inputs])  # [n_in, *node]
    node_shape = (batch, out_res, out_res, self.C)
    if layout == "CNHW":
      node_shape = (self.C, batch, out_res, out_res)
    nodes = jnp.zeros((n_in + n_inner, *node_shape), inputs[0].dtype)
    if in_stride == 1:
      nodes = nodes.at[:n_in].set(x_in)
    n_src = n_in + n_inner - 1
    last = jnp.zeros((n_src, *node_shape), nodes.dtype)
    concat_last = topo.concat_last
    stats_mutable = self.is_mutable_collection("batch_stats")

    for r, (t0, t1, stride) in enumerate(segments(topo, self.reduction)):
      n_t = t1 - t0
      live = [(k, n) for k, n in enumerate(self.op_set) if not ops.get_op(n).is_zero]
      mods, params, stats, stat_keys = {}, {}, {}, []
      example = x_in[0] if t0 < n_in else nodes[0]
      for k, name in live:
        mod = OpCall(name, self.C, stride, op_ctx)
        mods[k] = mod
        key = search_param_name(r, name)

        def init_fn(rng, mod=mod, example=example, n_t=n_t):
          rngs = jax.random.split(rng, n_t * n_inner)
          rngs = rngs.reshape(n_t, n_inner, *rngs.shape[1:])
          return jax.vmap(jax.vmap(lambda q: mod.init(q, example)))(rngs)

        if self.is_initializing():
          full = init_fn(self.make_rng("params"))
          params[k] = self.param(key, lambda _, f=full: f["params"]) if full.get("params") else {}
          stats[k] = (
            self.variable("batch_stats", key, lambda f=full: f["batch_stats"]).value
            if full.get("batch_stats")
            else {}
          )
        else:
          params[k] = self.get_variable("params", key, {})
          stats[k] = self.get_variable("batch_stats", key, {})
        stat_keys.append((k, key))

      coef = coef_SJBK[t0:t1]
      if self.drop_path:
        ident = np.array([ops.get_op(n).identity_at_stride1 and stride == 1 for n in self.op_set])
        coef = coef * jnp.where(jnp.asarray(ident), 1.0, drop_SJBK[t0:t1])

      def apply_ops(x, p_t, s_t, coef_t, mods=mods):
        """Every live op on ``x``: per-slot (``coef_t [J, B, K]``) or one edge's (``[B, K]``)."""
        per_edge = coef_t.ndim == 2
        n_slots = None if per_edge else coef_t.shape[0]
        total, new_s = None, {}
        for k, mod in mods.items():
          one = functools.partial(apply_with_stats, mod)

          if per_edge:
            # One edge: its own parameters, no vmap (no slot axis to move around).
            y, new_s[k] = one(p_t[k], s_t[k], x)
            term = per_slot(coef_t[None, :, k], layout)[0] * y
          elif p_t[k]:
            # Per-slot parameters, shared input (a kxk conv becomes one conv
            # with J * C outputs, a depthwise one a matmul batched over slots).
            y, new_s[k] = jax.vmap(one, in_axes=(0, 0, None))(p_t[k], s_t[k], x)
            term = per_slot(coef_t[:, :, k], layout) * y
          else:
            # No parameters (pooling, identity): the same input on every slot
            # gives the same output and the same BatchNorm statistics, so the op
            # runs once (slot 0's statistics, written back to every slot).
            s0 = jax.tree.map(lambda a: a[0], s_t[k])
            y, upd = one({}, s0, x)
            new_s[k] = jax.tree.map(lambda a: jnp.broadcast_to(a, (n_slots, *a.shape)), upd)
            term = weighted_fan_out(y, coef_t[:, :, k], layout)
          total = term if total is None else total + term
        return total, new_s

      if self.remat and not self.is_initializing():
        # Recompute the ops in the backward pass, but keep max pooling's
        # int8 first-maximum index: recomputed inside the gradient's fused loop
        # it made that loop 8x slower (layers.max_pool_tap).
        apply_ops = jax.checkpoint(
          apply_ops, policy=jax.checkpoint_policies.save_only_these_names(MAX_POOL_TAP)
        )

      def body(carry, xs, reads_inputs, j0, apply_ops=apply_ops):
        # j0: the first target slot the scan's sources can reach (> 0 only for a
        # scan of inner sources alone, whose earlier slots are dead).
        nodes, last = carry
        t, p_t, s_t, coef_t = xs
        x = lax.dynamic_index_in_dim(x_in if reads_inputs else nodes, t, keepdims=False)
        total, new_s = apply_ops(x, p_t, s_t, coef_t)
        if concat_last:
          last = lax.dynamic_update_index_in_dim(last, total[-1], t, 0)
          total = total.at[-1].set(0.0)
        nodes = nodes.at[n_in + j0 :].add(total)
        return (nodes, last), new_s

      def edge_body(carry, xs, reads_inputs, apply_ops=apply_ops):
        # One edge (source t, target slot j) per step.
        nodes, last = carry
        (t, j), p_e, s_e, coef_e = xs
        x = lax.dynamic_index_in_dim(x_in if reads_inputs else nodes, t, keepdims=False)
        total, new_s = apply_ops(x, p_e, s_e, coef_e)
        if concat_last:
          to_last = j == n_inner - 1
          kept = lax.dynamic_index_in_dim(last, t, keepdims=False)
          last = lax.dynamic_update_index_in_dim(last, jnp.where(to_last, total, kept), t, 0)
          total = jnp.where(to_last, 0.0, total)
        nodes = nodes.at[n_in + j].add(total)
        return (nodes, last), new_s

      run_stats = dict(stats)
      for lo, hi, reads_inputs, per_edge in _scans(
        t0, t1, stride, n_in, self.split_inputs, self.schedule
      ):
        if per_edge:
          # The scan's real edges, source-major: every edge into a node is done
          # before the first edge out of it.
          src, slot = np.nonzero(slot_edges[lo:hi] >= 0)
          rows, cols = src + lo - t0, slot
          fn = functools.partial(edge_body, reads_inputs=reads_inputs)
          n_steps = len(src)
          xs = (
            (jnp.asarray(src + lo), jnp.asarray(slot)),
            *jax.tree.map(lambda v, r=rows, c=cols: v[r, c], (params, stats, coef)),
          )
        else:
          rows = slice(lo - t0, hi - t0)
          # A scan of inner sources alone (a reduction cell's stride-1 run, or one
          # split off) skips the slots none of its sources reaches (target <=
          # source): one of three in a paper cell's, one of two in a stem's.
          j0 = max(lo - n_in + 1, 0)
          cols = slice(j0, None)
          fn = functools.partial(body, reads_inputs=reads_inputs, j0=j0)
          n_steps = hi - lo
          xs = (
            jnp.arange(lo, hi),
            *jax.tree.map(lambda v, r=rows, c=cols: v[r, c], (params, stats, coef)),
          )
        (nodes, last), piece = lax.scan(fn, (nodes, last), xs, unroll=n_steps if self.unroll else 1)
        # Statistics of the slots a scan did not evaluate keep their values.
        for k in piece:
          run_stats[k] = jax.tree.map(
            lambda old, new, r=rows, c=cols: old.at[r, c].set(new), run_stats[k], piece[k]
          )
      if stats_mutable and not self.is_initializing():
        for k, key in stat_keys:
          if stats[k]:
            self.put_variable("batch_stats", key, run_stats[k])

    inner = [nodes[n_in + j] for j in range(n_inner)]
    if concat_last:
      inner[-1] = jnp.concatenate([last[t] for t in range(n_src)], axis=channel_axis(layout))
    return [to_layout(x, layout, "NHWC") for x in inner]


class DerivedDAG(nn.Module):
  """Derived DAG: each kept edge applies one op; ``choice[e] = op index`` or -1 (pruned)."""

  topology: Topology
  op_set: tuple[str, ...]
  choice: tuple[int, ...]
  C: int
  reduction: bool
  ctx: OpContext
  drop_path: bool = False

  @nn.compact
  def __call__(self, inputs: Sequence[jax.Array], drop_prob=0.0):
    topo = self.topology
    if len(inputs) != topo.n_inputs:
      raise ValueError(f"expected {topo.n_inputs} inputs, got {len(inputs)}")
    nodes = list(inputs)
    for j in range(topo.n_inner):
      parts = []
      for e in topo.node_edges(j):
        k = self.choice[e]
        if k < 0:
          continue
        source = topo.edges[e][0]
        stride = _edge_stride(topo, self.reduction, source)
        name = self.op_set[k]
        op = ops.get_op(name)
        y = OpCall(name, self.C, stride, self.ctx, name=derived_param_name(e))(nodes[source])
        if self.drop_path and not (op.identity_at_stride1 and stride == 1):
          keep = drop_path_mask(self.make_rng("dropout"), 1.0 - drop_prob, (y.shape[0],), y.dtype)
          y = y * keep[:, None, None, None]
        parts.append(y)
      if not parts:
        raise ValueError(f"inner node {j} has no kept precedent")
      nodes.append(_finish(topo, j, parts))
    return nodes[topo.n_inputs :]


def edge_params_from_search(
  topology: Topology,
  reduction: bool,
  search_tree: dict,
  choice: Sequence[int],
  op_set: Sequence[str],
) -> dict:
  """Map one collection (params or batch_stats) of a MixedDAG to a DerivedDAG.

  For each kept edge ``e`` with op ``k``: the slice ``[source in run, target
  slot]`` of ``run{r}_{op}``.
  """
  out = {}
  for e, k in enumerate(choice):
    if k < 0:
      continue
    r, t, j = edge_slot(topology, reduction, e)
    key = search_param_name(r, op_set[k])
    if key in search_tree:
      out[derived_param_name(e)] = jax.tree.map(lambda a, t=t, j=j: a[t, j], search_tree[key])
  return out


def search_param_count(topology: Topology, reduction: bool, params: dict) -> int:
  """Parameters of the real edges only (the padding slots are left out)."""
  total = 0
  for e in range(topology.num_edges):
    r, t, j = edge_slot(topology, reduction, e)
    for key, tree in params.items():
      if key.startswith(f"run{r}_"):
        total += sum(int(np.prod(a.shape[2:])) for a in jax.tree.leaves(tree))
  return total
