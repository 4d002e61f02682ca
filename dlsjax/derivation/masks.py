"""The derivation state on the host: masks of the supernet (numpy) and their transitions.

``masks = {part: {"op": f32[E, K], "decided": f32[E], "edge": f32[E]}}`` (see
``dlsjax.supernet``). Every function here returns new masks and leaves its
argument as it was, so a method's state is a value it passes on.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import numpy as np

from dlsjax import netspec, supernet
from dlsjax.topology import Topology


def host_masks(spec: netspec.NetworkSpec) -> dict:
  """Nothing removed, nothing decided (numpy)."""
  return jax.tree.map(np.array, supernet.init_masks(spec))


def _copy(masks: dict) -> dict:
  return jax.tree.map(np.array, masks)


def without_op(masks: dict, part: str, edge: int, op: int) -> dict:
  """``masks`` with operation ``op`` of ``edge`` removed (its mixing weight zeroed)."""
  out = _copy(masks)
  out[part]["op"][edge, op] = 0.0
  return out


def without_edge(masks: dict, part: str, edge: int) -> dict:
  """``masks`` with ``edge`` pruned."""
  out = _copy(masks)
  out[part]["edge"][edge] = 0.0
  return out


def with_decided_edge(masks: dict, part: str, edge: int, op: int) -> dict:
  """``masks`` with ``edge`` discretised to operation ``op`` (a one-hot row)."""
  out = _copy(masks)
  row = np.zeros_like(out[part]["op"][edge])
  row[op] = 1.0
  out[part]["op"][edge] = row
  out[part]["decided"][edge] = 1.0
  return out


def without_edges(masks: dict, part: str, edges) -> dict:
  """``masks`` with every edge of ``edges`` pruned."""
  out = _copy(masks)
  for e in edges:
    out[part]["edge"][e] = 0.0
  return out


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
