"""The DLS-DARTS supernet as pure functions over separate pytrees.

* ``variables = {"params", "batch_stats"}``: network weights and BN statistics;
* ``alphas = {part: f32[E, K]}``: architecture weights, one array per
  learnable part (``fusing``, ``fl``, ``normal``, ``reduce``; shared by all
  cells of a type);
* ``masks = {part: {"op": f32[E, K], "decided": f32[E], "edge": f32[E]}}``:
  the derivation state. ``op`` zeroes removed operations (and holds the
  one-hot row of a decided edge), ``decided`` marks edges replaced by that
  one-hot row, ``edge`` zeroes pruned precedents (one edge per node and
  precedent). Masks are ordinary traced arguments, so a derivation never
  recompiles and ``jax.vmap`` over masks scores many candidates at once.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlsjax import layers, precision
from dlsjax import rng as rng_lib
from dlsjax.netspec import NetworkSpec
from dlsjax.network import Network, mixing_weights

__all__ = [
  "make_supernet",
  "init",
  "apply",
  "init_alphas",
  "init_masks",
  "mixing_weights",
  "dummy_images",
]


def make_supernet(spec: NetworkSpec, *, bn_axis_name: str | None = None) -> Network:
  return Network(spec, genotype=None, bn_axis_name=bn_axis_name)


def init_alphas(spec: NetworkSpec, rng, scale: float = 1e-3) -> dict:
  """``scale * N(0, 1)`` per part, as in DARTS."""
  topos = spec.topologies()
  keys = jax.random.split(rng, len(topos))
  return {
    p: scale * jax.random.normal(k, (t.num_edges, len(spec.op_set)), jnp.float32)
    for k, (p, t) in zip(keys, topos.items(), strict=True)
  }


def init_masks(spec: NetworkSpec) -> dict:
  """Nothing removed, nothing decided."""
  out = {}
  for p, t in spec.topologies().items():
    out[p] = {
      "op": jnp.ones((t.num_edges, len(spec.op_set)), jnp.float32),
      "decided": jnp.zeros((t.num_edges,), jnp.float32),
      "edge": jnp.ones((t.num_edges,), jnp.float32),
    }
  return out


def masks_from_choice(spec: NetworkSpec, choice: dict) -> dict:
  """Masks of a fully decided supernet: one-hot rows, pruned edges zeroed."""
  out = {}
  for p, t in spec.topologies().items():
    c = np.asarray(choice[p])
    op = np.zeros((t.num_edges, len(spec.op_set)), np.float32)
    kept = c >= 0
    op[np.nonzero(kept)[0], c[kept]] = 1.0
    out[p] = {
      "op": jnp.asarray(op),
      "decided": jnp.ones((t.num_edges,), jnp.float32),
      "edge": jnp.asarray(kept.astype(np.float32)),
    }
  return out


def dummy_images(spec: NetworkSpec, batch: int = 1, dtype=jnp.float32) -> dict:
  r = spec.resolution
  return {m.name: jnp.zeros((batch, r, r, m.channels), dtype) for m in spec.modalities}


def init(spec: NetworkSpec, rng, batch: int = 2) -> dict:
  """Initialise ``{"params", "batch_stats"}`` (shapes only depend on ``spec``)."""
  spec.log_structure()
  model = make_supernet(spec)
  alphas = init_alphas(spec, jax.random.PRNGKey(0))
  images, masks = dummy_images(spec, batch), init_masks(spec)
  variables = jax.jit(
    lambda r: model.init(
      {"params": layers.init_key(rng_lib.raw(r))}, images, alphas, masks, train=True
    )
  )(rng)
  return {"params": variables["params"], "batch_stats": variables["batch_stats"]}


def apply(
  variables,
  images,
  alphas,
  masks,
  *,
  spec: NetworkSpec,
  train: bool,
  rngs=None,
  drop_prob=0.0,
  update_stats: bool | None = None,
  bn_axis_name: str | None = None,
  stage: str = "all",
  stem_features=None,
):
  """Logits of the supernet, and the new ``batch_stats`` when they are updated.

  ``update_stats`` defaults to ``train``. With ``train=True,
  update_stats=False`` BatchNorm uses batch statistics without updating the
  running ones (the PT / MPDS derivation setting). Returns
  ``(logits, batch_stats)``; ``batch_stats`` is the input one when not
  updated. ``stage="stems"`` returns the stem outputs (``{stem name: output}``,
  the inputs of the cells) instead of logits; ``stage="cells"`` starts from
  given ``stem_features`` (``images`` is then unused), see ``network.STAGES``.
  """
  update = train if update_stats is None else update_stats
  model = make_supernet(spec, bn_axis_name=bn_axis_name)
  dtype = precision.compute_dtype(spec.dtype)  # model.dtype: bfloat16 computes in bfloat16
  v = {
    "params": precision.cast(variables["params"], dtype),
    "batch_stats": variables["batch_stats"],
  }
  images, alphas, masks = precision.cast((images, alphas, masks), dtype)
  stem_features = precision.cast(stem_features, dtype)
  kw = dict(train=train, drop_prob=drop_prob, rngs=rngs, stage=stage, stem_features=stem_features)
  if update:
    logits, new = model.apply(v, images, alphas, masks, mutable=["batch_stats"], **kw)
    return _f32(logits), new["batch_stats"]
  logits = model.apply(v, images, alphas, masks, **kw)
  return _f32(logits), variables["batch_stats"]


def _f32(tree):
  """At least float32 (bfloat16 logits back to float32; float64 ones, in x64 tests, kept)."""
  return jax.tree.map(lambda x: x.astype(jnp.promote_types(x.dtype, jnp.float32)), tree)
