"""The derived (NAS-based) network: the supernet's macro structure with pruned parts.

Built from a genotype in the array encoding (``{part: int32[E]}``, see
:mod:`dlsjax.genotype`) and a :class:`~dlsjax.netspec.NetworkSpec` built for
the training phase (``K_train`` normal cells per group, ``C_sin`` 144 in the
paper). Weights are re-initialised; DropPath probability is an argument of
every call, so training can ramp it without recompiling.
"""

from __future__ import annotations

from collections.abc import Mapping

import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from dlsjax import layers, precision
from dlsjax import rng as rng_lib
from dlsjax.cells import edge_params_from_search
from dlsjax.netspec import NetworkSpec
from dlsjax.network import Network
from dlsjax.supernet import dummy_images


def _frozen_choice(choice: Mapping[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
  return {p: tuple(int(x) for x in np.asarray(c)) for p, c in choice.items()}


def make_derived_net(
  spec: NetworkSpec,
  choice: Mapping[str, np.ndarray],
  *,
  aux_head: bool = False,
  bn_axis_name: str | None = None,
  search_style_bn: bool = False,
) -> Network:
  """``search_style_bn`` builds it with the supernet's BN (non-affine, BN after pooling)."""
  kw = dict(affine=False, pool_bn=True) if search_style_bn else {}
  return Network(
    spec, genotype=_frozen_choice(choice), aux_head=aux_head, bn_axis_name=bn_axis_name, **kw
  )


def random_argmax_network(model_cfg, seed: int = 1) -> tuple[NetworkSpec, dict, Network]:
  """``(train spec, choice, model)``: the argmax genotype of random alphas of ``model_cfg``.

  A stand-in architecture of the right size for benchmarks and calibration.
  """
  from dlsjax import genotype, supernet
  from dlsjax.netspec import spec_from_config

  search_spec = spec_from_config(model_cfg, phase="search")
  spec = spec_from_config(model_cfg, phase="train")
  alphas = supernet.init_alphas(search_spec, jax.random.PRNGKey(seed), scale=1.0)
  choice = genotype.derive_argmax(alphas, spec.topologies(), spec.op_set)
  return spec, choice, make_derived_net(spec, choice)


def init(model: Network, rng, batch: int = 2) -> dict:
  images = dummy_images(model.spec, batch)
  init_rngs = lambda r: {"params": layers.init_key(rng_lib.raw(r))}  # noqa: E731
  v = jax.jit(lambda r: model.init(init_rngs(r), images, train=True))(rng)
  return {"params": v["params"], "batch_stats": v["batch_stats"]}


def apply(
  model: Network,
  variables,
  images,
  *,
  train: bool,
  rngs=None,
  drop_prob=0.0,
  update_stats: bool | None = None,
):
  """Returns ``(logits, batch_stats, aux_logits or None)``."""
  update = train if update_stats is None else update_stats
  mutable = ["batch_stats", "intermediates"] if update else ["intermediates"]
  spec = getattr(model, "spec", None)  # a baseline CNN has none: float32
  dtype = precision.compute_dtype(spec.dtype if spec is not None else "float32")
  cast = {"params": precision.cast(variables["params"], dtype)}
  logits, state = model.apply(
    {**variables, **cast}, precision.cast(images, dtype), train=train, drop_prob=drop_prob,
    rngs=rngs, mutable=mutable,
  )  # fmt: skip
  inter = state.get("intermediates", {})
  aux = _f32(inter["aux_logits"][0]) if "aux_logits" in inter else None
  return _f32(logits), state.get("batch_stats", variables["batch_stats"]), aux


def _f32(x):
  """At least float32: bfloat16 logits back to float32, float64 ones kept."""
  return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def variables_from_search(
  spec: NetworkSpec,
  search_variables: Mapping,
  choice: Mapping[str, np.ndarray],
  template: Mapping,
) -> dict:
  """Copy supernet weights into a derived network of the same spec and channels.

  Every parameter outside the parts' DAGs has the same path in both; inside a
  DAG the slice of edge ``e`` of the stacked ``src{s}_{op}`` parameters goes
  to ``edge{e}``. Leaves the derived network has and the supernet lacks (e.g.
  affine BN scale/bias) keep their ``template`` value.
  """
  topos = spec.topologies()
  out = {}
  for col in ("params", "batch_stats"):
    src = search_variables[col]
    mapped = {}
    for name, sub in src.items():
      part = part_of(spec, name)
      if part is not None and "dag" in sub:
        sub = dict(sub)
        sub["dag"] = edge_params_from_search(
          topos[part], spec.is_reduction(part), sub["dag"], choice[part], spec.op_set
        )
      mapped[name] = sub
    flat_t = traverse_util.flatten_dict(template[col])
    flat_s = traverse_util.flatten_dict(mapped)
    merged = {k: flat_s.get(k, v) for k, v in flat_t.items()}
    for k, v in merged.items():
      if np.shape(v) != np.shape(flat_t[k]):
        raise ValueError(f"{col}/{'/'.join(k)}: shape {np.shape(v)} vs {np.shape(flat_t[k])}")
    out[col] = traverse_util.unflatten_dict(merged)
  return out


def part_of(spec: NetworkSpec, module_name: str) -> str | None:
  """The learnable part a top-level module belongs to; None for any other module."""
  for stem in spec.active_stems():
    if module_name == stem.module_name:
      return stem.name if spec.stem_kind(stem.name) == "learnable" else None
  if module_name.startswith("cell") and module_name[4:].isdigit():
    return spec.cells[int(module_name[4:])]
  return None
