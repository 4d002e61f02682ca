"""Named configs. ``get_config("paper")`` etc.; each module has ``get_config(arg)``."""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib

CONFIGS = {
  "paper": "search_paper",
  "paper_train": "train_paper",
  "darts_cifar": "search_darts_cifar",
  "darts_cifar_train": "train_darts_cifar",
  "demo": "demo",
  "medmnist": "medmnist",  # medmnist | medmnist:full
  "experiment": "experiment",  # experiment:paper | experiment:demo | experiment:tiny
}


# The variants of each config (None: the config itself); ``tiny`` is every config's small one.
VARIANTS = {
  "paper": (None, "tiny"),
  "paper_train": (None, "tiny"),
  "darts_cifar": (None,),
  "darts_cifar_train": (None,),
  "demo": (None, "tiny"),
  "medmnist": (None, "full", "tiny"),
  "experiment": ("paper", "demo", "tiny"),
}


def get_config(name: str, arg: str | None = None):
  """The ConfigDict of a named config; ``arg`` is passed to its ``get_config``.

  ``name:arg`` is the same as ``get_config(name, arg)`` (e.g. ``demo:tiny``).
  """
  if arg is None and ":" in name:
    name, arg = name.split(":", 1)
  if name not in CONFIGS:
    raise KeyError(f"unknown config {name!r}; available: {sorted(CONFIGS)}")
  module = importlib.import_module(f"dlsjax.configs.{CONFIGS[name]}")
  return module.get_config(arg) if arg is not None else module.get_config()


def dataclass_from_config(cls, cfg, **fixed):
  """``cls(**fixed, **{f: cfg[f]})`` for the fields of dataclass ``cls`` that ``cfg`` has."""
  names = {f.name for f in dataclasses.fields(cls)} - set(fixed)
  return cls(**fixed, **{k: cfg[k] for k in names if k in cfg})


@functools.cache
def known_keys() -> frozenset[str]:
  """Every leaf key path of every named config, variant and model preset: the config schema."""
  from dlsjax import models
  from dlsjax.checkpoint import flat_config

  keys = set()
  for name, variants in VARIANTS.items():
    for arg in variants:
      cfg = get_config(name, arg)
      keys |= set(flat_config(cfg))
      for model in models.names():
        keys |= set(flat_config(models.apply_preset(cfg.copy_and_resolve_references(), model)))
  return frozenset(keys)


def check_keys(config, source: str = "config") -> None:
  """Raise ``ValueError`` naming every key of ``config`` that no dlsjax config has (a typo
  would otherwise be ignored: dataclasses read only the fields they know). Registered stems'
  fields (``model.<stem>_stem``) are known too."""
  from dlsjax import parts
  from dlsjax.checkpoint import flat_config

  allowed = known_keys() | {f"model.{s.config_field}" for s in parts.stems()}
  unknown = sorted(k for k in flat_config(config) if k not in allowed)
  if unknown:
    hints = []
    for k in unknown:
      close = difflib.get_close_matches(k, allowed, n=1)
      hints.append(f"{k} (did you mean {close[0]}?)" if close else k)
    raise ValueError(f"{source}: unknown config keys: {', '.join(hints)}")
