"""The library's random keys: ``rbg`` keys, chosen here and not by a process-wide setting.

Every key dlsjax makes from a seed (``key``) is a typed key of the ``rbg``
implementation, so what a search, a training or a derivation draws (alphas,
DropPath masks, PT's fine-tuning) is the same whether or not the caller
changed ``jax_default_prng_impl`` or called ``runtime.setup``: a typed key
carries its implementation into every ``split``, ``fold_in`` and draw.
``rbg`` because its draws compile to one XLA RngBitGenerator instead of
threefry's unrolled rounds (measured in benchmarks/RESULTS.md). Parameter
initialisation goes through ``layers.init_key`` and DropPath under ``vmap``
through ``bilevel.vmap_invariant_key``, which accept these keys and raw ones.

The compiled steps take their key as raw data (``data``: a ``uint32`` array,
which the runners replicate like any other array) and ``wrap`` it inside, so
the data is read as an ``rbg`` key whatever the process default.
"""

from __future__ import annotations

import jax

IMPL = "rbg"


def key(seed: int) -> jax.Array:
  """The typed ``rbg`` key of ``seed``."""
  return jax.random.key(int(seed), impl=IMPL)


def data(seed: int) -> jax.Array:
  """The raw data of ``key(seed)``: what a compiled step takes (see ``wrap``)."""
  return jax.random.key_data(key(seed))


def raw(k) -> jax.Array:
  """The raw data of a typed key; raw data as it is (what ``layers.init_key`` converts)."""
  return jax.random.key_data(k) if jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key) else k


def wrap(k) -> jax.Array:
  """A typed key as it is; raw key data as the key it is the data of.

  Raw data of 4 words is an ``rbg`` key (``data``); of 2 words a threefry key
  (``jax.random.PRNGKey`` under JAX's default), so a caller's own raw keys
  work too. Never the process default's reading.
  """
  if jax.dtypes.issubdtype(k.dtype, jax.dtypes.prng_key):
    return k
  words = k.shape[-1]
  if words not in (2, 4):
    raise ValueError(f"raw key data must have 2 (threefry) or 4 (rbg) words, got shape {k.shape}")
  return jax.random.wrap_key_data(k, impl=IMPL if words == 4 else "threefry2x32")


def step_key(k, step, axis_name: str | None = None) -> jax.Array:
  """The key of one step of a per-device function: ``k`` folded with the step and, under
  ``axis_name``, with the device's index (each device draws its own DropPath masks)."""
  k = jax.random.fold_in(wrap(k), step)
  if axis_name:
    k = jax.random.fold_in(k, jax.lax.axis_index(axis_name))
  return k
