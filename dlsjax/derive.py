"""Deriving a discrete architecture from a searched supernet.

Three methods (``derive.method``):

* ``mpds`` (paper Algorithm 1, the default): for each learnable part in the
  order fusing, fl, normal, reduce, first every edge in edge order (first
  inner node to last, precedents in order): score the supernet with each
  non-``none`` operation removed (its mixing weight zeroed, no
  renormalisation) and discretise the edge to the operation whose removal
  hurts most; then every inner node in order: score the supernet with each
  precedent removed and keep the ``k`` whose removal hurts most (``k`` = the
  part's number of inputs; the concatenating last node of a learnable stem
  keeps all). Weights and alphas stay frozen (no fine-tuning).
* ``argmax``: DARTS (the "- MPDS" ablation of Table III).
* ``pt``: perturbation-based selection of Wang et al. (ICLR 2021): the same
  scores, edges and then nodes in a seeded random order over all parts, with
  ``derive.pt_tune_epochs`` epochs of weight fine-tuning (SGD, lr
  ``search.w_lr * derive.pt_lr_factor`` cosine-annealed over each tuning
  period, alphas frozen; a dlsjax choice where the PT description is not
  specific) after every decision. PT's node rule ("drop the edge whose removal
  gives the highest accuracy until k remain") is applied in one round, which
  keeps the same edges when removals do not interact.

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
outputs are cached per batch while a cell (or the other stem) is decided,
and inside a stem the operations on its inputs are left out of the vmap
(see ``Evaluator``). Measured in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from dlsjax import bilevel, checkpoint, genotype, losses, metrics, netspec, ops, sharding, supernet
from dlsjax.network import STEM_FEATURES
from dlsjax.topology import Topology

log = logging.getLogger(__name__)

METHODS = ("mpds", "argmax", "pt")
METRICS = ("accuracy", "loss", "auc")
FEATURE_PART = {v: k for k, v in STEM_FEATURES.items()}


class DeriveError(RuntimeError):
  """A derivation that cannot run (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class DeriveOptions:
  """``config.derive``."""

  method: str = "mpds"
  metric: str = "accuracy"
  batch_size: int = 16  # validation batch (the search batch in the paper preset)
  max_images: int = 0  # metric on the first N images of the alpha half (0: all)
  chunk: int = 0  # candidates per vmapped evaluation (0: the non-zero ops, one call per edge)
  vmap: bool = True  # False: one compiled call per candidate (the reference loop)
  pt_tune_epochs: int = 5
  pt_tune_max_steps: int = 0  # cap on the weight steps of one tuning period (0: none)
  pt_lr_factor: float = 0.1
  pt_seed: int = 0

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"derive.method must be one of {METHODS}, got {self.method!r}")
    if self.metric not in METRICS:
      raise ValueError(f"derive.metric must be one of {METRICS}, got {self.metric!r}")
    if self.chunk < 0 or self.batch_size < 1:
      raise ValueError(f"derive.chunk must be >= 0 and derive.batch_size >= 1, got {self}")

  @classmethod
  def from_config(cls, derive_cfg, **overrides) -> DeriveOptions:
    from dlsjax.configs import dataclass_from_config

    base = dataclass_from_config(cls, derive_cfg or {})
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


# --------------------------------------------------------------------------- #
# Masks on the host (numpy) and their candidates
# --------------------------------------------------------------------------- #


def host_masks(spec: netspec.NetworkSpec) -> dict:
  return jax.tree.map(np.array, supernet.init_masks(spec))


def without_op(masks: dict, part: str, edge: int, op: int) -> dict:
  out = copy.deepcopy(masks)
  out[part]["op"][edge, op] = 0.0
  return out


def without_edge(masks: dict, part: str, edge: int) -> dict:
  out = copy.deepcopy(masks)
  out[part]["edge"][edge] = 0.0
  return out


def decide_edge(masks: dict, part: str, edge: int, op: int) -> None:
  row = np.zeros_like(masks[part]["op"][edge])
  row[op] = 1.0
  masks[part]["op"][edge] = row
  masks[part]["decided"][edge] = 1.0


def choice_from_masks(masks: dict, topologies: Mapping[str, Topology]) -> dict[str, np.ndarray]:
  """Op index per edge (-1 for pruned edges) of fully decided masks."""
  out = {}
  for p in topologies:
    m = masks[p]
    c = np.argmax(m["op"], axis=-1).astype(np.int32)
    c[m["edge"] == 0] = -1
    if not np.all(m["decided"][m["edge"] > 0] == 1):
      raise ValueError(f"part {p!r}: some kept edges are not decided")
    out[p] = c
  return out


# --------------------------------------------------------------------------- #
# Scoring candidates
# --------------------------------------------------------------------------- #


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
  the first kept), so no separate stem graph is compiled: that compile
  (11 s of a 3-minute benchmark derivation) cost more than the repeated
  inner-node edges of the stem (one edge per stem in the paper layout).
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
    self.stem_parts = tuple(p for p in self.parts if p in STEM_FEATURES)
    self.features = ("fused", "fl") if spec.has_fl_stem else ("fused",)  # the stems' outputs
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
  def _stem_key(self, masks: dict, feature: str) -> bytes:
    part = FEATURE_PART[feature]
    if part not in masks:
      return b""  # not learnable: it never changes
    return b"".join(np.ascontiguousarray(masks[part][k]).tobytes() for k in sorted(masks[part]))

  def _cached_features(self, masks: dict, wanted: Sequence[str]) -> list[dict]:
    """Per batch, the stem outputs ``wanted`` (``fused``/``fl``) under ``masks``.

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
    learnable = [f for f in stale if FEATURE_PART[f] in self.stem_parts]
    for f in learnable:
      part = FEATURE_PART[f]
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
  def _stack(self, candidates: Sequence[dict], parts: Sequence[str]) -> dict:
    """The masks of ``parts``, with a leading axis over the candidates."""
    return {p: jax.tree.map(lambda *xs: np.stack(xs), *[c[p] for c in candidates]) for p in parts}

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
    cached = [f for f in self.features if FEATURE_PART[f] != part]
    cells = self._stack(chunk, [p for p in self.parts if p not in self.stem_parts])
    stem = self._stack(chunk, [part]) if part in self.stem_parts else None
    cache = self._cached_features(chunk[0], cached) if cached else None
    cells_runner, bcast = self._runner("cells"), self._runner("broadcast")
    sums, probs = [], []
    for i, b in enumerate(self.batches):
      feats = {f: bcast(x)[0] for f, x in cache[i].items()} if cache else {}
      if stem is not None:
        out = self._runner(part)(self._variables, self._alphas, stem, b)[0]
        feats = {**feats, STEM_FEATURES[part]: out}
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


# --------------------------------------------------------------------------- #
# The derivations
# --------------------------------------------------------------------------- #


def _op_candidates(op_set: Sequence[str]) -> list[int]:
  return [k for k, name in enumerate(op_set) if not ops.get_op(name).is_zero]


def decide_edge_op(ev: Evaluator, masks: dict, part: str, edge: int) -> dict:
  """Score removing each non-zero op of ``edge``; discretise it to the most needed one."""
  spec = ev.spec
  topo = spec.topologies()[part]
  cand = _op_candidates(spec.op_set)
  values = ev.scores(part, [without_op(masks, part, edge, k) for k in cand])
  bad = badness(ev.opts.metric, values)
  best = cand[int(np.argmax(bad))]  # first wins ties
  decide_edge(masks, part, edge, best)
  src, dst = topo.edges[edge]
  return {
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


def decide_node_inputs(ev: Evaluator, masks: dict, part: str, inner: int) -> dict:
  """Score removing each precedent of inner node ``inner``; keep the ``k`` most needed."""
  topo = ev.spec.topologies()[part]
  edges = list(topo.node_edges(inner))
  keep = topo.keeps(inner)
  entry = {"part": part, "kind": "node", "node": topo.n_inputs + inner}
  if keep >= len(edges):
    entry.update(candidates=[], kept=[topo.edges[e][0] for e in edges], note="keeps all precedents")
    return entry
  values = ev.scores(part, [without_edge(masks, part, e) for e in edges])
  bad = badness(ev.opts.metric, values)
  order = np.argsort(-bad, kind="stable")  # most harmful removal first, earlier edge on ties
  kept = sorted(int(i) for i in order[:keep])
  for i, e in enumerate(edges):
    if i not in kept:
      masks[part]["edge"][e] = 0.0
  entry.update(
    candidates=[
      {"edge": e, "source": topo.edges[e][0], "metric": float(v)}
      for e, v in zip(edges, values, strict=True)
    ],
    kept=[topo.edges[edges[i]][0] for i in kept],
  )
  return entry


def decisions(spec: netspec.NetworkSpec) -> list[tuple[str, str, int]]:
  """MPDS order: per part, every edge, then every inner node."""
  out = []
  for p, topo in spec.topologies().items():
    out += [(p, "edge", e) for e in range(topo.num_edges)]
    out += [(p, "node", j) for j in range(topo.n_inner)]
  return out


def pt_decisions(spec: netspec.NetworkSpec, seed: int) -> list[tuple[str, str, int]]:
  """PT order: all edges of all parts in random order, then all nodes in random order."""
  rng = np.random.default_rng(seed)
  d = decisions(spec)
  edges = [x for x in d if x[1] == "edge"]
  nodes = [x for x in d if x[1] == "node"]
  return [edges[i] for i in rng.permutation(len(edges))] + [
    nodes[i] for i in rng.permutation(len(nodes))
  ]


def run_decisions(
  ev: Evaluator,
  order: Sequence[tuple[str, str, int]],
  *,
  after_each: Callable[[dict], None] | None = None,
  progress: bool = False,
) -> tuple[dict, list[dict]]:
  """Make every decision of ``order``; returns the final masks and the log."""
  masks = host_masks(ev.spec)
  entries = []
  it = order
  if progress:
    from tqdm import tqdm

    it = tqdm(order, desc=f"derive ({ev.opts.method}, {ev.opts.metric})")
  for part, kind, idx in it:
    t0 = time.perf_counter()
    if kind == "edge":
      entry = decide_edge_op(ev, masks, part, idx)
    else:
      entry = decide_node_inputs(ev, masks, part, idx)
    entry["seconds"] = round(time.perf_counter() - t0, 3)
    entries.append(entry)
    if after_each is not None:
      after_each(masks)
  return masks, entries


# --------------------------------------------------------------------------- #
# The job: read a finished search, derive, write outputs
# --------------------------------------------------------------------------- #


def load_search(workdir: pathlib.Path):
  """``(config, spec, hparams, state, meta)`` of the finished search in ``workdir``."""
  cfg_path = workdir / "config.json"
  ckpt_dir = workdir / "checkpoints"
  if not cfg_path.is_file() or not ckpt_dir.is_dir():
    raise DeriveError(
      f"{workdir}: not a search run (no config.json and checkpoints/); "
      "run `dlsjax search --workdir ...` first"
    )
  config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
  spec = netspec.spec_from_config(config.model, phase="search")
  ckpt = checkpoint.Checkpoints(ckpt_dir)
  try:
    if ckpt.latest_step() is None:
      raise DeriveError(f"{ckpt_dir}: no checkpoint; the search has not finished an epoch")
    meta = ckpt.meta()
    epochs = int(config.search.epochs)
    if meta["epoch"] < epochs or meta["batch"] != 0:
      raise DeriveError(
        f"{workdir}: the search is not finished (checkpoint at epoch {meta['epoch']} of "
        f"{epochs}, batch {meta['batch']}); continue it with `dlsjax search --resume`"
      )
    h = bilevel.SearchHParams.from_config(config.search, steps_per_epoch=1)
    template = jax.eval_shape(lambda: bilevel.init_state(spec, h, jax.random.PRNGKey(0)))
    state, meta = ckpt.restore(template)
  finally:
    ckpt.close()
  return config, spec, h, state, meta


def validation_batches(config, data_dir, batch_size: int, max_images: int = 0) -> list[dict]:
  """The alpha half of the training split (as in the search), in fixed full batches.

  ``max_images`` > 0 keeps the first that many (rounded down to full batches).
  """
  from dlsjax.data import dataset, pipeline

  ds = dataset.load(data_dir)
  src = ds.source("train")
  _, a_idx = pipeline.search_halves(len(src), int(config.seed))
  n = len(a_idx) if max_images <= 0 else min(len(a_idx), max_images)
  n = (n // batch_size) * batch_size
  if n == 0:
    raise DeriveError(
      f"{data_dir}: the alpha half has {len(a_idx)} specimens, fewer than one batch of "
      f"{batch_size} (set derive.batch_size)"
    )
  batches = pipeline.eval_batches(
    ds, src, np.sort(a_idx[:n]), batch_size=batch_size, resolution=config.model.resolution
  )
  return [{k: b[k] for k in ("images", "label")} for b in batches]


def derive(
  workdir,
  *,
  data_dir=None,
  method: str | None = None,
  metric: str | None = None,
  overrides: Mapping | None = None,
  progress: bool = True,
) -> genotype.Genotype:
  """Derive the genotype of the search in ``workdir`` and write the outputs there."""
  workdir = pathlib.Path(workdir)
  config, spec, h, state, _ = load_search(workdir)
  dcfg = ml_collections.ConfigDict(config.get("derive", {}).to_dict() if "derive" in config else {})
  for k, v in (overrides or {}).items():
    dcfg[k] = v
  opts = DeriveOptions.from_config(dcfg, method=method, metric=metric)
  topos = spec.topologies()
  t0 = time.perf_counter()
  info = {"method": opts.method, "metric": opts.metric, "options": dataclasses.asdict(opts)}
  if opts.method == "argmax":
    choice = genotype.derive_argmax(state["alphas"], topos, spec.op_set)
    entries = []
  else:
    data_dir = data_dir or _recorded_data_dir(workdir)
    batches = validation_batches(config, data_dir, opts.batch_size, opts.max_images)
    ev = Evaluator(
      spec,
      state,
      state["alphas"],
      batches,
      opts=opts,
      focal_gamma=h.focal_gamma,
      focal_alpha=h.focal_alpha,
      mode=config.search.get("parallel", "pmap"),
    )
    if opts.method == "mpds":
      masks, entries = run_decisions(ev, decisions(spec), progress=progress)
    else:
      tuner = PTTuner(config, spec, h, state, data_dir, opts, ev)
      masks, entries = run_decisions(
        ev, pt_decisions(spec, opts.pt_seed), after_each=tuner, progress=progress
      )
      info["pt_tuning_steps"] = tuner.steps_done
    choice = choice_from_masks(masks, topos)
    info.update(
      validation_images=len(ev.labels),
      devices=ev.n_devices,
      compilations=ev.compilations,
      candidate_evaluations=ev.evaluations,
    )
  geno = genotype.Genotype.from_choice(choice, topos, spec.op_set)
  info["seconds"] = round(time.perf_counter() - t0, 2)
  info["genotype"] = geno.to_dict()
  info["decisions"] = entries
  geno.save(workdir / "genotype.json")
  (workdir / "derivation_log.json").write_text(json.dumps(info, indent=1))
  from dlsjax import plots

  plots.genotype_figure(geno, workdir / "genotype.png", title=f"{opts.method} ({opts.metric})")
  log.info("derived in %.1f s:\n%s", info["seconds"], geno)
  return geno


def _recorded_data_dir(workdir: pathlib.Path) -> str:
  run = workdir / "search_run.json"
  if run.is_file():
    return json.loads(run.read_text())["data_dir"]
  raise DeriveError(f"{workdir}: no search_run.json recording the data; pass --data-dir")


class PTTuner:
  """PT's fine-tuning between decisions: weights only, on the weight half, masks applied."""

  def __init__(self, config, spec, h, state, data_dir, opts: DeriveOptions, ev: Evaluator):
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

    if self.opts.pt_tune_epochs <= 0:
      return
    wstate = self.runner.replicate(
      {
        "params": self.params,
        "batch_stats": self.stats,
        "alphas": self.alphas,
        "opt_w": self.tx.init(self.params),
        "step": np.zeros((), np.int32),
      }
    )
    rng = jax.random.PRNGKey(self.opts.pt_seed + 1000 * (self.round + 1))
    steps = 0
    for epoch in range(self.opts.pt_tune_epochs):
      batches = pipeline.train_batches(
        self.ds,
        self.src,
        self.w_idx,
        batch_size=self.batch,
        seed=self.opts.pt_seed + self.round,
        epoch=epoch,
        aug=self.aug,
      )
      for b in pipeline.iterate(batches):
        if self.opts.pt_tune_max_steps and steps >= self.opts.pt_tune_max_steps:
          break
        wstate, _ = self.runner(wstate, self.runner.shard_batch(b), masks, rng)
        steps += 1
    self.steps_done += steps
    host = self.runner.unreplicate(wstate)
    self.params, self.stats = host["params"], host["batch_stats"]
    self.ev.set_weights({"params": self.params, "batch_stats": self.stats}, self.alphas)
    self.round += 1


__all__ = [
  "DeriveError",
  "DeriveOptions",
  "Evaluator",
  "decisions",
  "derive",
  "pt_decisions",
  "run_decisions",
]
