"""Process-wide settings of the command line's entry point (and the tests'): the compilation
cache and a GPU compiler flag.

Nothing here changes what the library computes on a given backend: a library
user who never calls :func:`setup` gets the same numbers from the same seeds
(keys are chosen explicitly in ``dlsjax.rng``), only slower first compiles.
"""

from __future__ import annotations

import os
from pathlib import Path

import jax


def setup(cache_dir: str | None = None) -> None:
  """The entry point's process settings: the compilation cache and, on GPUs, cuBLAS GEMMs.

  Call it once before the first computation (``dlsjax.main`` does); it sets
  ``XLA_FLAGS`` and JAX's cache options, nothing that changes results.
  """
  _gpu_gemm_flag()
  _cache(cache_dir)


TRITON_GEMM_FLAG = "--xla_gpu_enable_triton_gemm=false"


def _gpu_gemm_flag() -> None:
  """Use cuBLAS instead of XLA's Triton GEMM fusions on GPUs, unless XLA_FLAGS says otherwise.

  With Triton GEMM fusions (JAX 0.11.2 on an H200) the second-order search step and the
  MPDS scoring function abort in XLA's compiler
  (``triton_tiling_propagation.cc: Check failed: subdim_size_accumulator == dim_size``) and
  the first-order step compiled far slower; with cuBLAS all three compile
  (benchmarks/RESULTS.md, "Search step (GPU)"). The flag is part of every
  jaxlib's flag set, so it is harmless on CPU and TPU. It only takes effect if no backend has
  started yet; set ``XLA_FLAGS=--xla_gpu_enable_triton_gemm=true`` to keep Triton.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if "xla_gpu_enable_triton_gemm" not in flags:
    os.environ["XLA_FLAGS"] = f"{flags} {TRITON_GEMM_FLAG}".strip()


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
