"""Derived architectures: one array encoding, and a Genotype value object at the edges.

The encoding used everywhere inside dlsjax is ``choice = {part: int32[E]}``:
for each edge of the part (edge numbering of :mod:`dlsjax.topology`) the
index of the chosen operation in the op set, or ``-1`` when the edge is
pruned. :class:`Genotype` exists only for logs and JSON files: it lists, per
part and inner node, the ``(op name, input node)`` pairs, like DARTS'
genotypes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from dlsjax import ops
from dlsjax.topology import Topology

FORMAT = "dlsjax-genotype-v1"


class GenotypeError(ValueError):
  """A malformed or inconsistent genotype; the message names the field."""


@dataclasses.dataclass(frozen=True)
class PartGenotype:
  n_inputs: int
  concat_last: bool
  nodes: tuple[tuple[tuple[str, int], ...], ...]  # per inner node: (op, input node)

  @property
  def topology(self) -> Topology:
    return Topology(self.n_inputs, len(self.nodes), self.concat_last)


@dataclasses.dataclass(frozen=True)
class Genotype:
  op_set: tuple[str, ...]
  parts: Mapping[str, PartGenotype]

  # ------------------------------------------------------------ conversions

  @classmethod
  def from_choice(
    cls,
    choice: Mapping[str, Sequence[int]],
    topologies: Mapping[str, Topology],
    op_set: Sequence[str],
  ) -> Genotype:
    parts = {}
    for p, topo in topologies.items():
      c = np.asarray(choice[p])
      if c.shape != (topo.num_edges,):
        raise GenotypeError(f"choice[{p!r}] has shape {c.shape}, expected ({topo.num_edges},)")
      nodes = []
      for j in range(topo.n_inner):
        nodes.append(
          tuple((op_set[int(c[e])], topo.edges[e][0]) for e in topo.node_edges(j) if c[e] >= 0)
        )
      parts[p] = PartGenotype(topo.n_inputs, topo.concat_last, tuple(nodes))
    g = cls(tuple(op_set), parts)
    g.validate()
    return g

  def to_choice(
    self, topologies: Mapping[str, Topology] | None = None, op_set: Sequence[str] | None = None
  ) -> dict[str, np.ndarray]:
    """The array encoding; checks the parts against a search space if given."""
    op_set = tuple(op_set) if op_set is not None else self.op_set
    out = {}
    for p, pg in self.parts.items():
      topo = pg.topology
      if topologies is not None:
        if p not in topologies:
          raise GenotypeError(
            f"parts.{p}: not a learnable part of this network (parts: {sorted(topologies)})"
          )
        if topologies[p] != topo:
          raise GenotypeError(
            f"parts.{p}: has {topo.n_inputs} inputs / {topo.n_inner} inner "
            f"nodes, the network expects {topologies[p].n_inputs} / "
            f"{topologies[p].n_inner}"
          )
      c = np.full((topo.num_edges,), -1, np.int32)
      for j, node in enumerate(pg.nodes):
        for op, src in node:
          if op not in op_set:
            raise GenotypeError(f"parts.{p}.nodes[{j}]: op {op!r} is not in the op set {op_set}")
          e = topo.edges.index((src, topo.n_inputs + j))
          c[e] = op_set.index(op)
      out[p] = c
    if topologies is not None:
      missing = sorted(set(topologies) - set(self.parts))
      if missing:
        raise GenotypeError(f"parts: missing {missing}")
    return out

  # ------------------------------------------------------------- validation

  def validate(self) -> None:
    for name in self.op_set:
      if name not in ops.registered_ops():
        raise GenotypeError(f"op_set: unknown operation {name!r}")
    for p, pg in self.parts.items():
      topo = pg.topology
      for j, node in enumerate(pg.nodes):
        where = f"parts.{p}.nodes[{j}]"
        n_prec = pg.n_inputs + j
        want = topo.keeps(j)
        if len(node) != want:
          raise GenotypeError(f"{where}: has {len(node)} inputs, expected {want}")
        srcs = [s for _, s in node]
        if len(set(srcs)) != len(srcs):
          raise GenotypeError(f"{where}: repeats an input node {srcs}")
        for i, (op, src) in enumerate(node):
          if op not in ops.registered_ops():
            raise GenotypeError(f"{where}[{i}].op: unknown operation {op!r}")
          if ops.get_op(op).is_zero:
            raise GenotypeError(f"{where}[{i}].op: {op!r} cannot be selected")
          if op not in self.op_set:
            raise GenotypeError(f"{where}[{i}].op: {op!r} is not in op_set")
          if not 0 <= src < n_prec:
            raise GenotypeError(f"{where}[{i}].input: {src} out of range [0, {n_prec})")

  # -------------------------------------------------------------------- JSON

  def to_dict(self) -> dict:
    return {
      "format": FORMAT,
      "op_set": list(self.op_set),
      "parts": {
        p: {
          "n_inputs": pg.n_inputs,
          "concat_last": pg.concat_last,
          "nodes": [[{"op": op, "input": src} for op, src in node] for node in pg.nodes],
        }
        for p, pg in self.parts.items()
      },
    }

  def to_json(self) -> str:
    return json.dumps(self.to_dict(), indent=2)

  @classmethod
  def from_dict(cls, d) -> Genotype:
    def need(obj, key, typ, where):
      if not isinstance(obj, dict) or key not in obj:
        raise GenotypeError(f"{where}: missing field {key!r}")
      v = obj[key]
      if not isinstance(v, typ) or (typ is int and isinstance(v, bool)):
        raise GenotypeError(
          f"{where}.{key}: expected {getattr(typ, '__name__', typ)}, got {type(v).__name__}"
        )
      return v

    if not isinstance(d, dict):
      raise GenotypeError("genotype: expected a JSON object")
    if d.get("format", FORMAT) != FORMAT:
      raise GenotypeError(f"format: expected {FORMAT!r}, got {d.get('format')!r}")
    op_set = tuple(need(d, "op_set", list, "genotype"))
    for i, name in enumerate(op_set):
      if not isinstance(name, str):
        raise GenotypeError(f"op_set[{i}]: expected a string")
    parts = {}
    for p, pd in need(d, "parts", dict, "genotype").items():
      where = f"parts.{p}"
      n_inputs = need(pd, "n_inputs", int, where)
      if n_inputs < 1:
        raise GenotypeError(f"{where}.n_inputs: must be >= 1")
      concat_last = need(pd, "concat_last", bool, where)
      nodes = []
      for j, node in enumerate(need(pd, "nodes", list, where)):
        if not isinstance(node, list):
          raise GenotypeError(f"{where}.nodes[{j}]: expected a list")
        entries = []
        for i, ent in enumerate(node):
          w = f"{where}.nodes[{j}][{i}]"
          entries.append((need(ent, "op", str, w), need(ent, "input", int, w)))
        nodes.append(tuple(entries))
      if not nodes:
        raise GenotypeError(f"{where}.nodes: empty")
      parts[p] = PartGenotype(n_inputs, concat_last, tuple(nodes))
    g = cls(op_set, parts)
    g.validate()
    return g

  @classmethod
  def from_json(cls, text: str) -> Genotype:
    try:
      d = json.loads(text)
    except json.JSONDecodeError as e:
      raise GenotypeError(f"genotype: invalid JSON ({e})") from None
    return cls.from_dict(d)

  @classmethod
  def load(cls, path: str | Path) -> Genotype:
    path = Path(path)
    try:
      return cls.from_json(path.read_text())
    except GenotypeError as e:
      raise GenotypeError(f"{path}: {e}") from None

  def save(self, path: str | Path) -> None:
    Path(path).write_text(self.to_json() + "\n")

  def __str__(self) -> str:
    lines = []
    for p, pg in self.parts.items():
      nodes = " | ".join(", ".join(f"{op} {src}" for op, src in node) for node in pg.nodes)
      lines.append(f"{p}: {nodes}")
    return "\n".join(lines)


def softmax_weights(alphas: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
  """Per part, the mixing weights softmax(alpha) over the op axis (float64, host)."""
  out = {}
  for p, a in alphas.items():
    a = np.asarray(a, np.float64)
    e = np.exp(a - a.max(-1, keepdims=True))
    out[p] = e / e.sum(-1, keepdims=True)
  return out


def derive_argmax(
  alphas: Mapping[str, np.ndarray], topologies: Mapping[str, Topology], op_set: Sequence[str]
) -> dict[str, np.ndarray]:
  """DARTS derivation: strongest non-zero op per edge, top-k edges per inner node.

  Edges are ranked by the softmax weight of their strongest non-zero op; ties
  go to the earlier edge (stable sort), as in DARTS. The concatenating last
  node of a learnable stem keeps all its precedents.
  """
  usable = np.array([not ops.get_op(n).is_zero for n in op_set])
  weights = softmax_weights({p: alphas[p] for p in topologies})
  out = {}
  for p, topo in topologies.items():
    w = weights[p]
    w_usable = np.where(usable[None, :], w, -np.inf)
    best_op = np.argmax(w_usable, axis=-1)
    strength = np.max(w_usable, axis=-1)
    c = np.full((topo.num_edges,), -1, np.int32)
    for j in range(topo.n_inner):
      es = np.asarray(topo.node_edges(j))
      order = np.argsort(-strength[es], kind="stable")[: topo.keeps(j)]
      for e in es[order]:
        c[e] = best_op[e]
    out[p] = c
  return out


# --------------------------------------------------------------------------- #
# Published genotypes
# --------------------------------------------------------------------------- #

DARTS_V2 = Genotype(
  op_set=ops.DARTS8,
  parts={
    "normal": PartGenotype(
      2,
      False,
      (
        (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 0), ("sep_conv_3x3", 1)),
        (("sep_conv_3x3", 1), ("skip_connect", 0)),
        (("skip_connect", 0), ("dil_conv_3x3", 2)),
      ),
    ),
    "reduce": PartGenotype(
      2,
      False,
      (
        (("max_pool_3x3", 0), ("max_pool_3x3", 1)),
        (("skip_connect", 2), ("max_pool_3x3", 1)),
        (("max_pool_3x3", 0), ("skip_connect", 2)),
        (("skip_connect", 2), ("max_pool_3x3", 1)),
      ),
    ),
  },
)

PRESET_GENOTYPES = {"darts_v2": DARTS_V2}
