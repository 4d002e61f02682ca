"""Process-wide JAX settings applied by the command line and the tests."""

from __future__ import annotations

import os
from pathlib import Path

import jax


def setup(cache_dir: str | None = None) -> None:
  """Process-wide defaults: PRNG implementation and compilation cache.

  The PRNG is ``rbg`` (``DLSJAX_PRNG`` overrides): initialising a supernet
  draws hundreds of parameter arrays, and XLA compiles the default threefry
  hash for each; measured on a 2-core CPU, the init of the ``runlocal``
  supernet compiled in 344 s with threefry and 84 s with rbg. Results stay
  deterministic for a given seed.
  """
  jax.config.update("jax_default_prng_impl", os.environ.get("DLSJAX_PRNG", "rbg"))
  _cache(cache_dir)


def _cache(cache_dir: str | None) -> None:
  """Enable the persistent compilation cache (``DLSJAX_CACHE_DIR``, default ~/.cache).

  Supernet steps take tens of seconds to compile on CPU; the cache makes
  every later run with the same shapes start at once. ``DLSJAX_CACHE_DIR=off``
  disables it.
  """
  cache_dir = (
    cache_dir
    or os.environ.get("DLSJAX_CACHE_DIR")
    or str(Path.home() / ".cache" / "dlsjax" / "jax")
  )
  if cache_dir == "off":
    return
  jax.config.update("jax_compilation_cache_dir", cache_dir)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
