"""Size, cost and compile facts of a search space or a derived network.

``dlsjax describe`` prints them. FLOPs come from XLA's cost analysis of the
forward pass for one image at the config's input size (XLA counts a
multiply-add as 2 FLOPs), with native depthwise convolutions so that the
count is the model's, not that of the CPU's block-diagonal formulation (and,
for supernets, with the cell scans unrolled and their zero-weight padding
slots included: what the supernet computes).
The HLO size and compile time are those of the jitted forward as it runs
(eval mode, batch 1). Supernet parameter counts leave the padding slots out.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np

from dlsjax import cells, derived_net, supernet
from dlsjax.netspec import NetworkSpec


def count_params(params: Mapping, exclude: tuple[str, ...] = ()) -> int:
  return int(
    sum(np.prod(x.shape) for k, v in params.items() if k not in exclude for x in jax.tree.leaves(v))
  )


def search_param_count(spec: NetworkSpec, params: Mapping) -> int:
  """Trainable parameters of a supernet, without the padding slots of the cell scans."""
  total = 0
  topos = spec.topologies()
  for name, sub in params.items():
    part = derived_net.part_of(spec, name)
    if part is not None and "dag" in sub:
      total += cells.search_param_count(topos[part], spec.is_reduction(part), sub["dag"])
      total += count_params({k: v for k, v in sub.items() if k != "dag"})
    else:
      total += count_params({name: sub})
  return total


def _flops(lowered) -> int | None:
  cost = lowered.cost_analysis()
  if isinstance(cost, list | tuple):
    cost = cost[0] if cost else {}
  return int(cost["flops"]) if cost and "flops" in cost else None


def _forward_facts(fn, args, compile_: bool, flops_fn=None) -> dict:
  """HLO size and trace (and compile) time of ``fn``; FLOPs of ``flops_fn`` (default ``fn``)."""
  t0 = time.perf_counter()
  lowered = jax.jit(fn).lower(*args)
  trace_s = time.perf_counter() - t0
  hlo = lowered.as_text()
  out = {"hlo_lines": len(hlo.splitlines()), "trace_s": round(trace_s, 2)}
  if compile_:
    t0 = time.perf_counter()
    lowered.compile()
    out["compile_s"] = round(time.perf_counter() - t0, 2)
  out["flops_per_image"] = _flops(lowered if flops_fn is None else jax.jit(flops_fn).lower(*args))
  return out


def _network_facts(model, compile_: bool, flops_model=None) -> tuple[dict, dict]:
  """Parameter shapes and :func:`_forward_facts` of a network module (batch 1, eval mode)."""
  shapes = jax.eval_shape(lambda: derived_net.init(model, jax.random.PRNGKey(0)))
  images = supernet.dummy_images(model.spec, 1)
  variables = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

  def forward(m):
    return lambda variables, images: m.apply(variables, images, train=False)

  flops_fn = None if flops_model is None else forward(flops_model)
  return shapes, _forward_facts(forward(model), (variables, images), compile_, flops_fn)


def describe_search_space(spec: NetworkSpec, *, compile_: bool = True, lower: bool = True) -> dict:
  """Structure facts; with ``lower`` also HLO size, trace time and FLOPs (and compile time)."""
  shapes = jax.eval_shape(lambda: supernet.init(spec, jax.random.PRNGKey(0)))
  alphas = jax.eval_shape(lambda: supernet.init_alphas(spec, jax.random.PRNGKey(0)))
  facts = {}
  if lower:
    masks = supernet.init_masks(spec)
    images = supernet.dummy_images(spec, 1)

    def fwd(variables, images, alphas, masks):
      return supernet.apply(variables, images, alphas, masks, spec=spec, train=False)[0]

    variables, alphas = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), (shapes, alphas))
    xla_spec = dataclasses.replace(spec, depthwise_impl="xla", scan_unroll=True)

    def fwd_xla(variables, images, alphas, masks):
      return supernet.apply(variables, images, alphas, masks, spec=xla_spec, train=False)[0]

    facts = _forward_facts(fwd, (variables, images, alphas, masks), compile_, fwd_xla)
  return {
    "kind": "search_space",
    "params": search_param_count(spec, shapes["params"]),
    "alphas": int(sum(a.size for a in alphas.values())),
    "parts": {
      p: {
        "edges": t.num_edges,
        "ops": len(spec.op_set),
        "inputs": t.n_inputs,
        "inner_nodes": t.n_inner,
      }
      for p, t in spec.topologies().items()
    },
    "cells": list(spec.cells),
    "op_set": list(spec.op_set),
    "input_shape": {
      m.name: [spec.resolution, spec.resolution, m.channels] for m in spec.modalities
    },
    **facts,
  }


def describe_derived(
  spec: NetworkSpec, choice, *, aux_head: bool = False, compile_: bool = True
) -> dict:
  model = derived_net.make_derived_net(spec, choice, aux_head=aux_head)
  xla_model = derived_net.make_derived_net(  # FLOPs with native depthwise convolutions
    dataclasses.replace(spec, depthwise_impl="xla"), choice, aux_head=aux_head
  )
  shapes, facts = _network_facts(model, compile_, xla_model)
  out = {
    "kind": "derived_network",
    "params": count_params(shapes["params"], exclude=("aux_head",)),
    "cells": list(spec.cells),
    "input_shape": {
      m.name: [spec.resolution, spec.resolution, m.channels] for m in spec.modalities
    },
    **facts,
  }
  if aux_head:
    out["params_aux_head"] = count_params({"a": shapes["params"]["aux_head"]})
  return out


def describe_module(model, *, compile_: bool = False) -> dict:
  """Parameters and FLOPs of any network module with a ``spec`` (the baselines)."""
  shapes, facts = _network_facts(model, compile_)
  return {"kind": type(model).__name__, "params": count_params(shapes["params"]), **facts}


def format_table(d: dict) -> str:
  rows = []
  for k, v in d.items():
    if isinstance(v, dict) and k == "parts":
      for p, pv in v.items():
        rows.append((f"part {p}", ", ".join(f"{a}={b}" for a, b in pv.items())))
    elif isinstance(v, dict):
      rows.append((k, ", ".join(f"{a}={b}" for a, b in v.items())))
    elif isinstance(v, list):
      rows.append((k, " ".join(map(str, v))))
    elif isinstance(v, int) and k in ("params", "alphas", "flops_per_image", "params_aux_head"):
      rows.append((k, f"{v:,}"))
    else:
      rows.append((k, str(v)))
  width = max(len(r[0]) for r in rows)
  return "\n".join(f"{a.ljust(width)}  {b}" for a, b in rows)
