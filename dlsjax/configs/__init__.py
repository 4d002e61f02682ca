"""Configs: one way to name them and one way to change them, the same for every command.

A config is named by a *spec*, as in big_vision and the Flax examples:

* ``paper``, ``paper:tiny``, ``medmnist:full``: a named config (``CONFIGS``) and a variant;
* ``path/to/my_config.py[:arg]``: any file with ``get_config(arg=None)`` returning a
  ``ConfigDict`` (copy ``dlsjax/configs/search_paper.py`` to start one);
* ``NAME:resnet18``, ``NAME:tiny,mmnas``: a model of ``dlsjax/models.py`` as a variant of any
  config with a ``model`` section (``--config paper_train:resnet18`` trains the baseline).

Fields change with ``--config.KEY=VALUE`` (or ``--config.KEY VALUE``) on every command:
:func:`load` applies them, refusing a key no config has with the key and a suggestion.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import importlib
import importlib.util
import pathlib

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
# Every config with a model section also takes a model name of dlsjax/models.py as a variant.
VARIANTS = {
  "paper": (None, "tiny"),
  "paper_train": (None, "tiny"),
  "darts_cifar": (None,),
  "darts_cifar_train": (None,),
  "demo": (None, "tiny"),
  "medmnist": (None, "full", "tiny"),
  "experiment": ("paper", "demo", "tiny"),
}


class ConfigError(ValueError):
  """A config spec or override that cannot apply; the message names the spec or key."""


def _split(spec: str) -> tuple[str, str | None]:
  name, _, arg = spec.partition(":")
  return name, arg or None


def _module(name: str):
  """The module of a named config or of a config file."""
  if name.endswith(".py"):
    path = pathlib.Path(name)
    if not path.is_file():
      raise ConfigError(f"--config {name}: no such config file")
    mod_spec = importlib.util.spec_from_file_location(f"dlsjax_user_config_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not callable(getattr(module, "get_config", None)):
      raise ConfigError(f"--config {name}: the file defines no get_config(arg=None)")
    return module
  if name not in CONFIGS:
    close = difflib.get_close_matches(name, CONFIGS, n=1)
    hint = f" (did you mean {close[0]}?)" if close else ""
    raise ConfigError(
      f"unknown config {name!r}{hint}; available: {sorted(CONFIGS)} or a path/to/config.py"
    )
  return importlib.import_module(f"dlsjax.configs.{CONFIGS[name]}")


def get_config(name: str, arg: str | None = None):
  """The ConfigDict of a spec (``paper``, ``demo:tiny``, ``file.py:arg``, ``NAME:resnet18``).

  ``get_config(name, arg)`` is the same as ``get_config(f"{name}:{arg}")``. The arg is a
  comma-separated list: at most one variant of the config's own plus model names.
  """
  from dlsjax import models

  if arg is None:
    name, arg = _split(name)
  module = _module(name)
  parts = [a.strip() for a in arg.split(",")] if arg else []
  model_names = [p for p in parts if p in models.names()]
  own = [p for p in parts if p not in model_names]
  if len(own) > 1:
    raise ConfigError(f"--config {name}:{arg}: more than one variant ({', '.join(own)})")
  cfg = module.get_config(own[0]) if own else module.get_config()
  for model in model_names:
    if "model" not in cfg:
      raise ConfigError(f"--config {name}:{arg}: the config has no model section for {model!r}")
    models.apply_preset(cfg, model)
  return cfg


def parse_value(raw: str, current):
  """A command-line value for a field that holds ``current``: a string field takes the text
  as it is; any other takes a Python literal, ``true``/``false``, or else the text."""
  if isinstance(current, str):
    return raw
  if raw.strip().lower() in ("true", "false"):
    return raw.strip().lower() == "true"
  try:
    return ast.literal_eval(raw)
  except (ValueError, SyntaxError):
    return raw


def field_parent(cfg, key: str):
  """``(node, leaf)`` with ``node[leaf]`` the existing field ``key`` (``a.b.c``) of ``cfg``;
  ``KeyError`` when there is no such field."""
  node = cfg
  *path, leaf = key.split(".")
  try:
    for p in path:
      node = node[p]
    if not hasattr(node, "keys") or leaf not in node:
      raise KeyError(key)
  except (KeyError, TypeError):
    raise KeyError(key) from None
  return node, leaf


def override(cfg, key: str, raw: str, *, spec: str = "config") -> None:
  """Set ``cfg.<key>`` from command-line text; the error names the key (and the nearest)."""
  try:
    node, leaf = field_parent(cfg, key)
  except KeyError:
    close = difflib.get_close_matches(key, _leaf_keys(cfg), n=1)
    hint = f" (did you mean --config.{close[0]}?)" if close else ""
    raise ConfigError(f"--config.{key}: no such field in {spec}{hint}") from None
  value = parse_value(raw, node[leaf])
  try:
    node[leaf] = value
  except (TypeError, ValueError) as e:
    raise ConfigError(f"--config.{key}={raw}: {e}") from None


def _leaf_keys(cfg) -> list[str]:
  from dlsjax.checkpoint import flat_config

  return list(flat_config(cfg))


def load(spec: str, overrides=(), *, only: str | None = None):
  """The config of ``spec`` with the overrides applied and every key checked: what every
  command does with ``--config SPEC --config.KEY=VALUE ...``.

  ``overrides``: ``(key, text)`` pairs or ``"key=text"`` strings, applied in order.

  ``only``: a section prefix the overrides must stay in (``derive`` reads a search's own
  config and may change only ``derive.*``).
  """
  from dlsjax import models

  cfg = get_config(spec)
  for item in overrides:
    if isinstance(item, str) and "=" not in item:
      raise ConfigError(f"override {item!r}: expected KEY=VALUE")
    key, raw = item.split("=", 1) if isinstance(item, str) else item
    if only is not None and not key.startswith(f"{only}."):
      raise ConfigError(f"--config.{key}: only {only}.* fields can be set here")
    override(cfg, key, raw, spec=spec)
  check_keys(cfg, spec)
  models.check_arch(cfg)
  return cfg


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
      keys |= set(flat_config(get_config(name, arg)))
      for model in models.names():
        keys |= set(flat_config(get_config(name, f"{arg},{model}" if arg else model)))
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
    raise ConfigError(f"{source}: unknown config keys: {', '.join(hints)}")


def split_flags(argv) -> tuple[list[str], list[tuple[str, str]]]:
  """``argv`` without its ``--config.KEY=VALUE`` / ``--config.KEY VALUE`` flags, and those
  flags as ``(KEY, VALUE)`` in order (a later one wins)."""
  rest, pairs, argv = [], [], list(argv)
  i = 0
  while i < len(argv):
    a = argv[i]
    if a.startswith("--config."):
      key, eq, raw = a[len("--config.") :].partition("=")
      if not eq:
        if i + 1 >= len(argv):
          raise ConfigError(f"{a}: no value (--config.KEY=VALUE)")
        raw, i = argv[i + 1], i + 1
      if not key:
        raise ConfigError(f"{a}: no key (--config.KEY=VALUE)")
      pairs.append((key, raw))
    else:
      rest.append(a)
    i += 1
  return rest, pairs
