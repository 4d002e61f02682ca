"""The DAG of one learnable part (a cell type or a learnable stem).

Node ids: ``0 .. n_inputs-1`` are input nodes, then ``n_inner`` inner nodes.
Every inner node is fully connected to all its precedents. Edges are
numbered node by node and, within a node, by precedent (DARTS order): for a
DARTS cell (2 inputs, 4 inner nodes) node 2 has edges 0-1, node 3 edges 2-4,
node 4 edges 5-8, node 5 edges 9-13.

Cells output the concatenation of all inner nodes. Learnable stems
(``concat_last=True``) differ: their *last* inner node concatenates the
outputs of its incoming edges instead of summing them, and keeps all its
precedents in derivation (paper, Section II-A.3 and Algorithm 1).
"""

from __future__ import annotations

import dataclasses
import functools


@dataclasses.dataclass(frozen=True)
class Topology:
  n_inputs: int
  n_inner: int
  concat_last: bool = False

  def __post_init__(self):
    if self.n_inputs < 1 or self.n_inner < 1:
      raise ValueError(f"a part needs >= 1 input and >= 1 inner node, got {self}")

  @property
  def k(self) -> int:
    """Precedents kept per inner node by a derivation (= number of input nodes)."""
    return self.n_inputs

  @functools.cached_property
  def edges(self) -> tuple[tuple[int, int], ...]:
    """``(source node, target node)`` per edge, in edge-number order."""
    out = []
    for j in range(self.n_inner):
      node = self.n_inputs + j
      out.extend((i, node) for i in range(node))
    return tuple(out)

  @property
  def num_edges(self) -> int:
    return len(self.edges)

  def node_edges(self, inner_index: int) -> tuple[int, ...]:
    """Edge numbers entering inner node ``inner_index`` (0-based among inner nodes)."""
    node = self.n_inputs + inner_index
    return tuple(e for e, (_, t) in enumerate(self.edges) if t == node)

  def is_concat_node(self, inner_index: int) -> bool:
    return self.concat_last and inner_index == self.n_inner - 1

  def keeps(self, inner_index: int) -> int:
    """How many precedents a derivation keeps for this inner node."""
    n_prec = self.n_inputs + inner_index
    return n_prec if self.is_concat_node(inner_index) else min(self.k, n_prec)
