"""The macro structure shared by the supernet and the derived (NAS-based) network.

Manual stems (3x3 conv + affine BN per modality) -> Fusing Stem and FL Stem
(learnable, or concat + 1x1 for the ablations) -> cells (reduction first in
DLS-DARTS, DARTS layout for the DARTS presets) -> global average pooling ->
dense head. ``genotype=None`` builds the search supernet (mixed edges);
otherwise each part uses its derived DAG.
"""

from __future__ import annotations

from collections.abc import Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from dlsjax import layers, parts
from dlsjax.cells import DerivedDAG, MixedDAG
from dlsjax.layers import BatchNorm, OpContext
from dlsjax.netspec import NetworkSpec, modality_images
from dlsjax.ops import FactorizedReduce, ReLUConvBN
from dlsjax.topology import Topology

# What ``Network.__call__`` computes (``stage``): everything (``all``); only
# the stems (``stems``: ``{stem name: output}``, the inputs of the cells); only
# one stem (its name, a registered stem of ``dlsjax.parts``); or only the
# cells and the head from given stem outputs (``cells``). The derivation
# scores stem and cell candidates in separate compiled stages (derive.py).
STAGES = ("all", "stems", "cells")


def mixing_weights(alpha_EK, mask):
  """``w = edge * (one-hot row if decided else softmax(alpha) * op_mask)``; no renormalisation."""
  soft = jax.nn.softmax(alpha_EK, axis=-1) * mask["op"]
  w = jnp.where(mask["decided"][:, None] > 0, mask["op"], soft)
  return w * mask["edge"][:, None]


class ManualStem(nn.Module):
  """3x3 conv (no bias) + affine BN, per modality."""

  C: int
  ctx: OpContext

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[-1]
    w = layers.param(self, "kernel", layers.conv_init(9 * c_in), (3, 3, c_in, self.C))
    return BatchNorm(OpContext(**{**self.ctx.__dict__, "affine": True}))(layers.conv(x, w))


def pre0_module(s0, s1, C: int, ctx: OpContext, **kw) -> nn.Module:
  """A cell's ``s0`` preprocessing: factorized reduce if ``s0`` has twice ``s1``'s resolution."""
  if s0.shape[1] == 2 * s1.shape[1]:
    return FactorizedReduce(C, ctx, **kw)
  if s0.shape[1] == s1.shape[1]:
    return ReLUConvBN(C, 1, 1, ctx, **kw)
  raise ValueError(f"cell inputs of incompatible resolution {s0.shape} vs {s1.shape}")


def _stack(trees):
  return jax.tree.map(lambda *a: jnp.stack(a), *trees)


class Part(nn.Module):
  """A cell or learnable stem: the DAG of one learnable part plus its in/out plumbing.

  Cells preprocess ``s0`` (factorized reduce if it has twice the resolution
  of ``s1``, else 1x1 ReLU-conv-BN) and ``s1`` (1x1 ReLU-conv-BN) to ``C``
  channels and output the concatenation of their inner nodes. Learnable stems
  take their inputs as they are and output a 1x1 ReLU-conv-BN of their last
  (concatenating) inner node to ``C_out`` channels.
  """

  topology: Topology
  op_set: tuple[str, ...]
  C: int
  reduction: bool
  ctx: OpContext
  is_stem: bool = False
  C_out: int = 0
  choice: tuple[int, ...] | None = None
  drop_path: bool = False
  unroll: bool = False
  remat: bool = False
  dag_layout: str = "NHWC"
  split_inputs: bool = False
  dag_schedule: str = "source"

  def mixed_dag_fields(self) -> dict:
    """The fields of this part's search DAG (``MixedDAG``)."""
    return dict(
      topology=self.topology,
      op_set=self.op_set,
      C=self.C,
      reduction=self.reduction,
      ctx=self.ctx,
      drop_path=self.drop_path,
      unroll=self.unroll,
      remat=self.remat,
      layout=self.dag_layout,
      split_inputs=self.split_inputs,
      schedule=self.dag_schedule,
    )

  @nn.compact
  def __call__(self, inputs, weights_EK=None, drop_prob=0.0):
    ctx = self.ctx
    if not self.is_stem:
      s0, s1 = inputs
      p0 = pre0_module(s0, s1, self.C, ctx, name="pre0")(s0)
      inputs = [p0, ReLUConvBN(self.C, 1, 1, ctx, name="pre1")(s1)]
    if self.choice is None:
      nodes = MixedDAG(**self.mixed_dag_fields(), name="dag")(inputs, weights_EK, drop_prob)
    else:
      nodes = DerivedDAG(
        self.topology,
        self.op_set,
        self.choice,
        self.C,
        self.reduction,
        ctx,
        self.drop_path,
        name="dag",
      )(inputs, drop_prob)
    if self.is_stem:
      return ReLUConvBN(self.C_out, 1, 1, ctx, name="out")(nodes[-1])
    return jnp.concatenate(nodes, axis=-1)


class AuxHead(nn.Module):
  """DARTS' CIFAR auxiliary head (input 8x8)."""

  num_classes: int
  ctx: OpContext

  @nn.compact
  def __call__(self, x):
    x = jax.nn.relu(x)
    x = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 5, 5, 1), (1, 3, 3, 1), "VALID") / 25.0
    c = x.shape[-1]
    x = layers.conv1x1(x, layers.param(self, "conv1", layers.conv_init(c), (c, 128)))
    x = jax.nn.relu(BatchNorm(self.ctx)(x))
    w2 = layers.param(self, "conv2", layers.conv_init(128 * 4), (2, 2, 128, 768))
    x = layers.conv(x, w2, padding=0)
    x = jax.nn.relu(BatchNorm(self.ctx)(x))
    return nn.Dense(self.num_classes, name="classifier")(x.reshape(x.shape[0], -1))


class Network(nn.Module):
  """Supernet (``genotype is None``) or derived network of a :class:`NetworkSpec`.

  ``__call__(images, alphas=None, masks=None, *, train, drop_prob=0.0)``:
  ``images`` maps modality name to ``[B, H, W, C]``; ``alphas`` and ``masks``
  (search only) have one entry per learnable part. Returns logits. With
  ``aux_head`` the auxiliary logits are sown into ``intermediates``.
  DropPath is active when ``train`` and a ``dropout`` rng is given.
  """

  spec: NetworkSpec
  genotype: Mapping[str, tuple[int, ...]] | None = None
  bn_axis_name: str | None = None
  aux_head: bool = False
  # BatchNorm style; None = the phase's default (search: non-affine with BN
  # after pooling, as in DARTS' search network; derived: affine, no pool BN).
  affine: bool | None = None
  pool_bn: bool | None = None

  @nn.compact
  def __call__(
    self,
    images,
    alphas=None,
    masks=None,
    *,
    train: bool,
    drop_prob=0.0,
    stage: str = "all",
    stem_features=None,
  ):
    spec = self.spec
    stems = {st.name: st for st in spec.active_stems()}
    if stage not in STAGES and stage not in stems:
      raise ValueError(f"stage must be one of {STAGES} or a stem of {list(stems)}, got {stage!r}")
    if (stage == "cells") != (stem_features is not None):
      raise ValueError("stem_features are given exactly when stage='cells'")
    search = self.genotype is None
    affine = (not search) if self.affine is None else self.affine
    pool_bn = search if self.pool_bn is None else self.pool_bn
    ctx = OpContext(
      train=train,
      affine=affine,
      pool_bn=pool_bn,
      depthwise_impl=spec.depthwise_impl,
      bn_axis_name=self.bn_axis_name,
    )
    drop_path = train and self.has_rng("dropout")
    topos = spec.topologies()
    if search:
      cells = [p for p in topos if not parts.is_stem(p)]
      used = {"all": topos, "stems": stems, "cells": cells}.get(stage, (stage,))
      missing = [
        p for p in topos if p in used and (p not in (alphas or {}) or p not in (masks or {}))
      ]
      if missing:
        raise ValueError(f"alphas/masks lack entries for parts {missing}")
    else:
      missing = [p for p in topos if p not in self.genotype]
      if missing:
        raise ValueError(f"genotype lacks parts {missing}")

    def part(part_name, **kw):
      topo = topos[part_name]
      if search:
        w = mixing_weights(alphas[part_name], masks[part_name])
        return Part(
          topo,
          spec.op_set,
          ctx=ctx,
          drop_path=drop_path,
          unroll=spec.scan_unroll,
          remat=spec.resolved_dag_remat(),
          dag_layout=spec.resolved_dag_layout(),
          split_inputs=spec.dag_split_inputs and kw.get("is_stem", False),
          dag_schedule=spec.resolved_dag_schedule(),
          **kw,
        ), w
      choice = tuple(int(c) for c in self.genotype[part_name])
      return Part(topo, spec.op_set, ctx=ctx, choice=choice, drop_path=drop_path, **kw), None

    if stage == "cells":
      outs = dict(stem_features)
    else:
      # Manual stems (only those the stage reads), then the stems.
      wanted = list(stems) if stage in ("all", "stems") else [stage]
      needed = {m.name for st in wanted for m in spec.stem_inputs(st)}
      feats = {
        m.name: ManualStem(spec.c_sin, ctx, name=f"stem_{m.name}")(x)
        for m, x in zip(spec.modalities, modality_images(spec, images), strict=True)
        if m.name in needed
      }
      outs = {st: self._stem(stems[st], feats, ctx, part, drop_prob) for st in wanted}
      if stage not in ("all", "stems"):
        return outs[stage]
      if stage == "stems":
        return outs
    fused = self._feed(outs, "s1")
    fl = self._feed(outs, "s0")
    # Cells.
    s0 = fl if fl is not None else fused
    s1 = fused
    C = spec.cell_channels
    aux_at = 2 * len(spec.cells) // 3
    shared = search and spec.share_cell_bodies and not self.aux_head
    runs = self._shared_runs(fl) if shared and not self.is_initializing() else {}
    i = 0
    while i < len(spec.cells):
      kind = spec.cells[i]
      if self._takes_fl(i, fl):
        s0 = fl
      if i in runs:
        s0, s1 = self._shared_run(i, runs[i], s0, s1, fl, C, part, drop_prob)
        i += runs[i]
        continue
      reduction = parts.get_cell_kind(kind).reduction
      if reduction:
        C *= 2
      mod, w = part(kind, C=C, reduction=reduction, name=f"cell{i}")
      s0, s1 = s1, mod([s0, s1], w, drop_prob)
      if self.aux_head and train and i == aux_at:
        aux_ctx = OpContext(**{**ctx.__dict__, "affine": True})
        self.sow(
          "intermediates",
          "aux_logits",
          AuxHead(spec.num_classes, aux_ctx, name="aux_head")(s1),
        )
      i += 1
    if not search:  # Grad-CAM differentiates w.r.t. this map (no-op without "perturbations")
      s1 = self.perturb("features", s1)
    self.sow("intermediates", "features", s1)
    pooled = jnp.mean(s1, axis=(1, 2))
    return nn.Dense(spec.num_classes, name="head")(pooled)

  def _takes_fl(self, i: int, fl) -> bool:
    """Whether cell ``i``'s ``s0`` is the FL Stem output ``fl`` (cells 1 .. fl_stem_cells - 1;
    cell 0 starts with it anyway)."""
    return fl is not None and 0 < i < self.spec.fl_stem_cells

  def _shared_runs(self, fl) -> dict[int, int]:
    """``{first cell: length}`` of the runs of consecutive normal cells that share one DAG body.

    A run is two or more cells of one non-reduction kind in a row (one stage: same channels and
    resolution). From its third cell on, a cell's ``s0`` must be the output of
    the cell two back, so a cell whose ``s0`` is the FL Stem's output starts a
    new run (``fl_stem_cells``).
    """
    spec = self.spec
    cells, runs, i = spec.cells, {}, 0
    while i < len(cells):
      if parts.get_cell_kind(cells[i]).reduction:
        i += 1
        continue
      j = i + 1
      while j < len(cells) and cells[j] == cells[i]:
        if j >= i + 2 and self._takes_fl(j, fl):
          break
        j += 1
      if j - i >= 2:
        runs[i] = j - i
      i = j
    return runs

  def _shared_run(self, first, m, s0, s1, fl, C, part, drop_prob):
    """Normal cells ``first .. first + m - 1`` as one ``lax.scan``: XLA compiles one body for all.

    Same values, parameters (``cell{i}`` as in the unshared network) and
    statistics as calling the cells one after another (``share_cell_bodies``
    in ``NetworkSpec``); only DropPath draws its masks from other keys. Step
    ``t`` runs cell ``t``'s DAG on its preprocessed inputs, then the
    preprocessing that reads the new output: cell ``t + 1``'s ``pre1`` and
    cell ``t + 2``'s ``pre0`` (both 1x1 ReLU-conv-BN). The first cell's
    preprocessing and the second cell's ``pre0`` (which read tensors of
    other shapes) run before the scan. The last step's ``pre1`` (and the
    last two steps' ``pre0``) have no next cell: they run on the parameters
    of cell ``first + 1``'s ``pre1`` and their results and statistics are
    dropped (one 1x1 convolution per run, three for a run of three or more
    cells: a few percent of a cell each).
    """
    spec = self.spec
    mod, w = part(spec.cells[first], C=C, reduction=False, parent=None)
    ctx = mod.ctx
    dag = MixedDAG(**mod.mixed_dag_fields(), parent=None)
    rcb = ReLUConvBN(C, 1, 1, ctx, parent=None)
    names = [f"cell{first + t}" for t in range(m)]
    P = [self.get_variable("params", n) for n in names]
    S = [self.get_variable("batch_stats", n, {}) for n in names]
    new_S = [dict(s) for s in S]

    def keep(t, key, value):
      if key in S[t]:
        new_S[t][key] = value

    p0, st = layers.apply_with_stats(
      pre0_module(s0, s1, C, ctx, parent=None), P[0]["pre0"], S[0].get("pre0", {}), s0
    )
    keep(0, "pre0", st)
    p1, st = layers.apply_with_stats(rcb, P[0]["pre1"], S[0].get("pre1", {}), s1)
    keep(0, "pre1", st)
    s0_next = fl if self._takes_fl(first + 1, fl) else s1
    p0_next, st = layers.apply_with_stats(
      pre0_module(s0_next, s1, C, ctx, parent=None), P[1]["pre0"], S[1].get("pre0", {}), s0_next
    )
    keep(1, "pre0", st)

    def at(t, key):  # a later cell's 1x1 preprocessing, or the stand-in past the run's end
      return (P[t][key], S[t].get(key, {})) if t < m else (P[1]["pre1"], S[1].get("pre1", {}))

    pre1_next = [at(t + 1, "pre1") for t in range(m)]
    pre0_after = [at(t + 2, "pre0") for t in range(m)] if m >= 3 else None
    keys = jax.random.split(self.make_rng("dropout"), m) if mod.drop_path else None
    xs = (
      _stack([P[t]["dag"] for t in range(m)]),
      _stack([S[t].get("dag", {}) for t in range(m)]),
      _stack(pre1_next),
      None if pre0_after is None else _stack(pre0_after),
      keys,
    )

    def body(carry, xs):
      p0, p1, p0_next = carry
      dag_p, dag_s, (q1_p, q1_s), q0, key = xs
      rngs = None if key is None else {"dropout": key}
      nodes, dag_s = layers.apply_with_stats(dag, dag_p, dag_s, [p0, p1], w, drop_prob, rngs=rngs)
      out = jnp.concatenate(nodes, axis=-1)
      p1_next, q1_s = layers.apply_with_stats(rcb, q1_p, q1_s, out)
      p0_after, q0_s = p0_next, None
      if q0 is not None:
        p0_after, q0_s = layers.apply_with_stats(rcb, q0[0], q0[1], out)
      return (p0_next, p1_next, p0_after), (out, dag_s, q1_s, q0_s)

    unroll = m if spec.scan_unroll else 1
    _, (outs, dag_s, q1_s, q0_s) = lax.scan(body, (p0, p1, p0_next), xs, unroll=unroll)
    for t in range(m):
      keep(t, "dag", jax.tree.map(lambda a, t=t: a[t], dag_s))
      if t + 1 < m:
        keep(t + 1, "pre1", jax.tree.map(lambda a, t=t: a[t], q1_s))
      if t + 2 < m:
        keep(t + 2, "pre0", jax.tree.map(lambda a, t=t: a[t], q0_s))
    if self.is_mutable_collection("batch_stats"):
      for n, s in zip(names, new_S, strict=True):
        self.put_variable("batch_stats", n, s)
    return outs[m - 2], outs[m - 1]

  def _stem(self, stem: parts.StemDef, feats, ctx, part, drop_prob):
    """The output of ``stem`` from the manual stems' ``feats`` (by modality)."""
    spec = self.spec
    ins = [feats[m.name] for m in spec.stem_inputs(stem.name)]
    kind, c_out = spec.stem_kind(stem.name), spec.stem_channels(stem.name)
    if kind == "learnable":
      mod, w = part(
        stem.name,
        C=spec.c_sin,
        reduction=False,
        is_stem=True,
        C_out=c_out,
        name=stem.module_name,
      )
      return mod(ins, w, drop_prob)
    if kind == "concat":
      return ReLUConvBN(c_out, 1, 1, ctx, name=stem.module_name)(jnp.concatenate(ins, -1))
    return ins[0]  # identity

  def _feed(self, outs, feeds: str):
    """The sum of the outputs of the stems that feed cell input ``feeds`` (None if none)."""
    xs = [x for name, x in outs.items() if parts.get_stem(name).feeds == feeds]
    if not xs:
      return None
    shapes = {x.shape for x in xs}
    if len(shapes) > 1:
      raise ValueError(f"stems feeding {feeds} have different output shapes {shapes}")
    return sum(xs[1:], xs[0])
