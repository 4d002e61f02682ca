"""Named configs. ``get_config("paper")`` etc.; each module has ``get_config(arg)``."""

from __future__ import annotations

import dataclasses
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
