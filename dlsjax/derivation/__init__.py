"""Deriving a discrete architecture from a searched supernet: a registry of methods.

* ``mpds`` (``mpds.py``): the paper's Algorithm 1, the default;
* ``argmax`` (``argmax.py``): DARTS (the "- MPDS" ablation of Table III);
* ``pt`` (``pt.py``): perturbation-based selection (Wang et al., ICLR 2021).

Each is one small module on the shared vmapped scoring engine
(``scoring.py``) and the mask transitions (``masks.py``); ``base.py`` holds
the registry, so a new method is one file (see ``base``). The job that reads
a search and writes the outputs is ``dlsjax.derive``.
"""

from dlsjax.derivation.base import (
  METRICS,
  Context,
  DeriveError,
  DeriveOptions,
  Method,
  Result,
  get_method,
  methods,
  register_method,
  unregister_method,
)

# The built-in methods, in the order ``methods()`` lists them.
from dlsjax.derivation import mpds, argmax, pt  # noqa: E402, F401  isort: skip

__all__ = [
  "METRICS",
  "Context",
  "DeriveError",
  "DeriveOptions",
  "Method",
  "Result",
  "get_method",
  "methods",
  "register_method",
  "unregister_method",
]
