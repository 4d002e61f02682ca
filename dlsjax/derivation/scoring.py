"""The scoring engine every derivation method shares: masked supernets scored in one vmap.

Scoring (``Evaluator``): BatchNorm in training mode without updating running
statistics, as the PT code does; the metric (``accuracy``, ``loss`` or
``auc``, micro-averaged) is computed over the alpha half of the training
split in fixed batches of ``derive.batch_size`` (the last partial batch is
dropped: with batch statistics a zero-padded batch would change every
example's normalisation). All candidates of one decision run in one
``jax.vmap`` over their mask pytrees, ``derive.chunk`` at a time (default:
the non-``none`` operations of an edge, one call per edge), over all local
devices; masks are traced arguments, so nothing recompiles per edge,
candidate or decision. The network runs in stages so that what the decided
part cannot change is computed once, not once per candidate: the stem
outputs are cached per batch while a cell (or another stem) is decided, and
inside a stem the operations on its inputs are left out of the vmap (see
``Evaluator``).

The two decisions of MPDS and PT (``decide_edge_op``, ``decide_node_inputs``)
and ``run_decisions``, which makes a list of them in order, live here too:
a method is an order of decisions plus what happens between them.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from dlsjax import losses, metrics, netspec, ops, parts, sharding, supernet
from dlsjax.derivation.base import DeriveError, DeriveOptions
from dlsjax.derivation.masks import (
  host_masks,
  with_decided_edge,
  without_edge,
  without_edges,
  without_op,
)


class Evaluator:
  """Scores masked supernets on fixed validation batches, many candidates per call.

  ``scores(part, candidates)`` returns the metric per candidate (numpy).

  The vmapped scoring runs the network in stages (``network.STAGES``), each
  compiled once: each learnable stem with a candidate axis, the cells with
  one, and (only for manual stems) the stems without. The outputs of the
  stems are cached per validation batch, keyed by their masks: while a cell
  is decided both stems are computed once for the whole part, and while a
  stem is decided the other stem's output is reused. A learnable stem's
  cached output comes from its own candidate stage (all candidates equal,
  the first kept), so no separate stem graph is compiled: that compile cost
  more than the repeated inner-node edges of the stem (one edge per stem in
  the paper layout; benchmarks/RESULTS.md).
  Inside a stem the operations on its inputs run once per batch
  (``NetworkSpec.dag_split_inputs``); only what follows the decided part
  runs once per candidate. ``compilations`` counts traces
  (each one compilation), never one per edge, candidate or decision. The
  reference loop (``vmap=False``) runs the whole network per candidate.
  """

  def __init__(
    self,
    spec: netspec.NetworkSpec,
    variables: dict,
    alphas: dict,
    batches: Sequence[dict],
    *,
    opts: DeriveOptions,
    focal_gamma: float = 2.0,
    focal_alpha: float = 1.0,
    mode: str = "pmap",
    devices=None,
  ):
    if not batches:
      raise DeriveError("no validation batch to score candidates on")
    # Scoring splits each learnable stem's input sources into a scan of
    # their own, so the candidate vmap leaves their operations unbatched (a
    # stem's inputs never depend on the candidate). The loop runs the same
    # network (same values either way). Both keep the per-source schedule, the
    # form the scoring speed was measured in.
    self.spec = dataclasses.replace(spec, dag_split_inputs=True, dag_schedule="source")
    self.opts = opts
    self.chunk = opts.chunk or max(len(_op_candidates(spec.op_set)), 1)
    self.compilations = 0
    self.evaluations = 0  # candidate evaluations (each over all batches)
    self.stem_passes = 0  # times the cached stem outputs were computed (over all batches)
    self.parts = tuple(spec.topologies())
    self.stem_parts = tuple(p for p in self.parts if parts.is_stem(p))  # the learnable stems
    self.features = tuple(s.name for s in spec.active_stems())  # the stems' outputs, by stem
    self._runners: dict[str, sharding.Runner] = {}
    self._focal = (focal_gamma, focal_alpha)
    self.layout = sharding.Layout(mode, devices)
    self.n_devices = self.layout.n
    self.batches = [self.layout.shard_batch(b) for b in batches]
    self.labels = np.concatenate([np.asarray(b["label"]) for b in batches])
    self.num_classes = spec.num_classes
    self.set_weights(variables, alphas)

  def set_weights(self, variables: dict, alphas: dict) -> None:
    v = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    self._variables = self.layout.replicate(v)
    self._alphas = self.layout.replicate(alphas)
    self._features: dict[str, tuple[bytes, list]] = {}  # stem output -> (masks key, per batch)

  # -- the per-device functions -----------------------------------------------
  def _apply(self, variables, alphas, masks, images, **stage):
    out, _ = supernet.apply(
      variables,
      images,
      alphas,
      masks,
      spec=self.spec,
      train=True,
      update_stats=False,
      bn_axis_name=sharding.AXIS,
      **stage,
    )
    return out

  def _sums(self, logits, label):
    """``(psum of [correct, focal loss sum], probabilities)`` of one device's batch."""
    gamma, alpha = self._focal
    b = logits.shape[0]
    target = jax.nn.one_hot(label, logits.shape[-1])
    loss_sum = b * losses.focal_loss(logits, target, gamma=gamma, alpha=alpha)
    correct = b * losses.accuracy(logits, label)
    sums = jax.lax.psum(jnp.stack([correct, loss_sum]), sharding.AXIS)
    return sums, jax.nn.softmax(logits.astype(jnp.float32), -1)

  def _make_runner(self, fn, in_kinds, out_kinds) -> sharding.Runner:
    def traced(*args):
      self.compilations += 1  # runs at trace time only
      return fn(*args)

    return sharding.Runner(
      traced,
      mode=self.layout.mode,
      devices=self.layout.devices,
      donate=False,
      in_kinds=in_kinds,
      out_kinds=out_kinds,
    )

  def _runner(self, name: str) -> sharding.Runner:
    """The compiled stage ``name``: ``loop``, ``stems``, ``cells``, a stem part, or one of the
    two trivial reshapes of cached stem outputs (``first``, ``broadcast``)."""
    if name in self._runners:
      return self._runners[name]
    R, B, H = sharding.REPLICATED, sharding.BATCH, sharding.HOST
    L = sharding.LOCAL
    if name == "loop":

      def fn(variables, alphas, masks, batch):
        sums, probs = self._sums(
          self._apply(variables, alphas, masks, batch["images"]), batch["label"]
        )
        return sums[None], probs[:, None]

      runner = self._make_runner(fn, (R, R, H, B), (H, B))
    elif name == "stems":  # no candidate axis: the cached stem outputs

      def fn(variables, alphas, masks, batch):
        return (self._apply(variables, alphas, masks, batch["images"], stage="stems"),)

      runner = self._make_runner(fn, (R, R, H, B), (L,))
    elif name in self.stem_parts:  # one stem, candidate axis 1: [batch, candidates, ...]

      def fn(variables, alphas, masks, batch, part=name):
        def one(m):
          return self._apply(variables, alphas, m, batch["images"], stage=part)

        return (jax.vmap(one, out_axes=1)(masks),)

      runner = self._make_runner(fn, (R, R, H, B), (L,))
    elif name == "broadcast":  # a cached stem output to every candidate

      def fn(x):  # one array at a time: one trace serves every stem output
        return (jnp.broadcast_to(x[:, None], (x.shape[0], self.chunk, *x.shape[1:])),)

      runner = self._make_runner(fn, (B,), (L,))
    elif name == "first":  # the first candidate of a stem stage's output: what is cached

      def fn(x):
        return (x[:, 0],)

      runner = self._make_runner(fn, (B,), (L,))
    elif name == "cells":  # stem outputs and cell masks with a candidate axis

      def fn(variables, alphas, masks, features, batch):
        def one(m, f):
          logits = self._apply(variables, alphas, m, None, stage="cells", stem_features=f)
          return self._sums(logits, batch["label"])

        sums, probs = jax.vmap(one, in_axes=(0, 1))(masks, features)
        return sums, jnp.swapaxes(probs, 0, 1)  # [batch, candidates, classes]

      runner = self._make_runner(fn, (R, R, H, B, B), (H, B))
    else:
      raise AssertionError(name)
    self._runners[name] = runner
    return runner

  # -- stem outputs, cached ---------------------------------------------------
  def _stem_key(self, masks: dict, part: str) -> bytes:
    if part not in masks:
      return b""  # not learnable: it never changes
    return b"".join(np.ascontiguousarray(masks[part][k]).tobytes() for k in sorted(masks[part]))

  def _cached_features(self, masks: dict, wanted: Sequence[str]) -> list[dict]:
    """Per batch, the outputs of the stems ``wanted`` under ``masks``.

    A learnable stem's output comes from its own candidate stage, run with
    every candidate equal to ``masks`` and cut to the first: no compilation
    of its own, and inside the stage only the edges from inner nodes run per
    candidate (a stem's input sources run once, ``dag_split_inputs``). Manual
    stems (concatenation) come from the ``stems`` stage.
    """
    stale = [f for f in wanted if self._features.get(f, (None,))[0] != self._stem_key(masks, f)]
    if stale:
      self.stem_passes += 1
      self._refresh_features(masks, stale)
    return [{f: self._features[f][1][i] for f in wanted} for i in range(len(self.batches))]

  def _refresh_features(self, masks: dict, stale: Sequence[str]) -> None:
    learnable = [f for f in stale if f in self.stem_parts]
    for part in learnable:
      f = part
      runner, first = self._runner(part), self._runner("first")
      same = self._stack([masks] * self.chunk, [part])
      outs = [first(runner(self._variables, self._alphas, same, b)[0])[0] for b in self.batches]
      self._features[f] = (self._stem_key(masks, f), outs)
    if len(learnable) < len(stale):
      runner = self._runner("stems")
      stems = {p: masks[p] for p in self.stem_parts}
      outs = [runner(self._variables, self._alphas, stems, b)[0] for b in self.batches]
      for f in stale:
        if f not in learnable:
          self._features[f] = (self._stem_key(masks, f), [o[f] for o in outs])

  # -- scoring -----------------------------------------------------------------
  def _stack(self, candidates: Sequence[dict], names: Sequence[str]) -> dict:
    """The masks of the parts ``names``, with a leading axis over the candidates."""
    return {p: jax.tree.map(lambda *xs: np.stack(xs), *[c[p] for c in candidates]) for p in names}

  def _run_loop(self, masks) -> tuple[np.ndarray, np.ndarray]:
    runner = self._runner("loop")
    sums, probs = [], []
    for b in self.batches:
      s, pr = runner(self._variables, self._alphas, masks, b)
      sums.append(np.asarray(s))
      probs.append(np.asarray(pr))
    return np.sum(sums, axis=0), np.concatenate(probs, axis=0)  # [1, 2], [n_val, 1, K]

  def _run_chunk(self, part: str, chunk: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``chunk`` (``self.chunk`` candidates differing in ``part`` only) over all batches."""
    cached = [f for f in self.features if f != part]
    cells = self._stack(chunk, [p for p in self.parts if p not in self.stem_parts])
    stem = self._stack(chunk, [part]) if part in self.stem_parts else None
    cache = self._cached_features(chunk[0], cached) if cached else None
    cells_runner, bcast = self._runner("cells"), self._runner("broadcast")
    sums, probs = [], []
    for i, b in enumerate(self.batches):
      feats = {f: bcast(x)[0] for f, x in cache[i].items()} if cache else {}
      if stem is not None:
        out = self._runner(part)(self._variables, self._alphas, stem, b)[0]
        feats = {**feats, part: out}
      s, pr = cells_runner(self._variables, self._alphas, cells, feats, {"label": b["label"]})
      sums.append(np.asarray(s))
      probs.append(np.asarray(pr))
    return np.sum(sums, axis=0), np.concatenate(probs, axis=0)  # [N, 2], [n_val, N, K]

  def raw(self, part: str, candidates: Sequence[dict]) -> tuple[np.ndarray, np.ndarray]:
    """``(sums [N, 2] = correct, loss sum; probs [n_val, N, K])`` per candidate."""
    n = len(candidates)
    self.evaluations += n
    if not self.opts.vmap:
      outs = [self._run_loop(c) for c in candidates]
      return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs], axis=1)
    k = self.chunk
    padded = list(candidates) + [candidates[-1]] * (-n % k)
    sums, probs = [], []
    for i in range(0, len(padded), k):
      s, pr = self._run_chunk(part, padded[i : i + k])
      sums.append(s)
      probs.append(pr)
    return np.concatenate(sums)[:n], np.concatenate(probs, axis=1)[:, :n]

  def scores(self, part: str, candidates: Sequence[dict]) -> np.ndarray:
    """The metric of each candidate (accuracy, mean loss or micro AUC)."""
    sums, probs = self.raw(part, candidates)
    n_val = len(self.labels)
    if self.opts.metric == "accuracy":
      return sums[:, 0] / n_val
    if self.opts.metric == "loss":
      return sums[:, 1] / n_val
    one_hot = np.eye(self.num_classes)[self.labels]
    return np.array([metrics.roc_auc_micro(one_hot, probs[:, i]) for i in range(len(candidates))])


def badness(metric: str, values: np.ndarray) -> np.ndarray:
  """Larger = the supernet is hurt more (lower accuracy/AUC, higher loss)."""
  return values if metric == "loss" else -values


def _op_candidates(op_set: Sequence[str]) -> list[int]:
  return [k for k, name in enumerate(op_set) if not ops.get_op(name).is_zero]


def decide_edge_op(ev: Evaluator, masks: dict, part: str, edge: int) -> tuple[dict, dict]:
  """Score removing each non-zero op of ``edge``; discretise it to the most needed one.

  Returns ``(new masks, log entry)``."""
  spec = ev.spec
  topo = spec.topologies()[part]
  cand = _op_candidates(spec.op_set)
  values = ev.scores(part, [without_op(masks, part, edge, k) for k in cand])
  bad = badness(ev.opts.metric, values)
  best = cand[int(np.argmax(bad))]  # first wins ties
  masks = with_decided_edge(masks, part, edge, best)
  src, dst = topo.edges[edge]
  return masks, {
    "part": part,
    "kind": "edge",
    "edge": edge,
    "source": src,
    "target": dst,
    "candidates": [
      {"op": spec.op_set[k], "metric": float(v)} for k, v in zip(cand, values, strict=True)
    ],
    "choice": spec.op_set[best],
  }


def decide_node_inputs(ev: Evaluator, masks: dict, part: str, inner: int) -> tuple[dict, dict]:
  """Score removing each precedent of inner node ``inner``; keep the ``k`` most needed.

  Returns ``(new masks, log entry)``."""
  topo = ev.spec.topologies()[part]
  edges = list(topo.node_edges(inner))
  keep = topo.keeps(inner)
  entry = {"part": part, "kind": "node", "node": topo.n_inputs + inner}
  if keep >= len(edges):
    entry.update(candidates=[], kept=[topo.edges[e][0] for e in edges], note="keeps all precedents")
    return masks, entry
  values = ev.scores(part, [without_edge(masks, part, e) for e in edges])
  bad = badness(ev.opts.metric, values)
  order = np.argsort(-bad, kind="stable")  # most harmful removal first, earlier edge on ties
  kept = sorted(int(i) for i in order[:keep])
  masks = without_edges(masks, part, [e for i, e in enumerate(edges) if i not in kept])
  entry.update(
    candidates=[
      {"edge": e, "source": topo.edges[e][0], "metric": float(v)}
      for e, v in zip(edges, values, strict=True)
    ],
    kept=[topo.edges[edges[i]][0] for i in kept],
  )
  return masks, entry


def decisions(spec: netspec.NetworkSpec) -> list[tuple[str, str, int]]:
  """MPDS order: per part, every edge, then every inner node."""
  out = []
  for p, topo in spec.topologies().items():
    out += [(p, "edge", e) for e in range(topo.num_edges)]
    out += [(p, "node", j) for j in range(topo.n_inner)]
  return out


def run_decisions(
  ev: Evaluator,
  order: Sequence[tuple[str, str, int]],
  *,
  after_each: Callable[[dict], None] | None = None,
  progress: bool = False,
) -> tuple[dict, list[dict]]:
  """Make every decision of ``order``; returns the final masks and the log.

  ``after_each(masks)`` runs after every decision (PT fine-tunes the weights there).
  """
  masks = host_masks(ev.spec)
  entries = []
  it = order
  if progress:
    from tqdm import tqdm

    it = tqdm(order, desc=f"derive ({ev.opts.method}, {ev.opts.metric})")
  for part, kind, idx in it:
    t0 = time.perf_counter()
    if kind == "edge":
      masks, entry = decide_edge_op(ev, masks, part, idx)
    else:
      masks, entry = decide_node_inputs(ev, masks, part, idx)
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    entries.append(entry)
    if after_each is not None:
      after_each(masks)
  return masks, entries
