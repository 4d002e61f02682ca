"""The paper's manually designed comparison CNNs (Table I), registered by name.

Each is a Flax module ``Module(spec, cfg, bn_axis_name)`` called as
``module(images, train=, drop_prob=)`` like the NAS-based network, so the
training, evaluation, Grad-CAM and predict code serve all of them. The input
is the modalities concatenated on channels (paper: 9 = WL + NIR-I + NIR-II).
``cfg`` is a frozen dataclass filled from ``config.model.baselines.<name>``.

A new baseline: ``register_baseline("name", ModuleClass, ConfigClass)``.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np
from flax import traverse_util

from dlsjax.baselines.efficientnet import EfficientNet, EfficientNetConfig
from dlsjax.baselines.pyramidnet import PyramidNet, PyramidNetConfig
from dlsjax.baselines.resnet import ResNet, ResNetConfig

log = logging.getLogger(__name__)

BASELINES: dict[str, tuple[type, type]] = {}


def register_baseline(name: str, module_cls: type, config_cls: type) -> None:
  if name in BASELINES:
    raise ValueError(f"baseline {name!r} is already registered")
  BASELINES[name] = (module_cls, config_cls)


register_baseline("resnet18", ResNet, ResNetConfig)
register_baseline("efficientnet_b0", EfficientNet, EfficientNetConfig)
register_baseline("pyramidnet_shakedrop", PyramidNet, PyramidNetConfig)


def default_configs() -> dict[str, dict]:
  """``config.model.baselines``: every baseline's hyper-parameters at their defaults."""
  return {name: dataclasses.asdict(cfg_cls()) for name, (_, cfg_cls) in BASELINES.items()}


def hparams(name: str, overrides=None):
  """The baseline's config dataclass with ``overrides`` (a mapping) applied."""
  _, cfg_cls = _lookup(name)
  fields = {f.name: f for f in dataclasses.fields(cfg_cls)}
  kw = {}
  for k, v in dict(overrides or {}).items():
    if k not in fields:
      raise ValueError(f"model.baselines.{name}.{k}: unknown (fields: {sorted(fields)})")
    kw[k] = tuple(v) if isinstance(v, list) else v
  return cfg_cls(**kw)


def build(name: str, spec, overrides=None, *, bn_axis_name: str | None = None):
  module_cls, _ = _lookup(name)
  return module_cls(spec, hparams(name, overrides), bn_axis_name=bn_axis_name)


def _lookup(name: str):
  if name not in BASELINES:
    raise ValueError(f"unknown baseline {name!r}; registered: {sorted(BASELINES)}")
  return BASELINES[name]


# Modules whose weights depend on the input channels or the classes: never transferred.
REINITIALISED = ("stem_conv", "head")


def load_pretrained(variables: dict, path, *, skip=REINITIALISED) -> tuple[dict, dict]:
  """Copy a checkpoint's weights into ``variables`` (paper: EfficientNet-B0 from ImageNet).

  ``path``: an orbax checkpoint directory of ``{"params", "batch_stats"}`` with
  this module's names (a converted ImageNet model). The stem conv and the
  classifier are left at their fresh initialisation ("the stem of the
  transferred model was dropped out and reinitialized to match the input
  with 9 channels"). Returns ``(variables, report)``; a leaf the checkpoint
  lacks or has with another shape is an error naming it.
  """
  import orbax.checkpoint as ocp

  path = pathlib.Path(path).resolve()
  if not path.exists():
    raise FileNotFoundError(f"pretrained checkpoint {path} does not exist")
  restored = ocp.PyTreeCheckpointer().restore(path)
  out, copied, kept = {}, 0, []
  for col in ("params", "batch_stats"):
    flat = traverse_util.flatten_dict(variables[col])
    src = traverse_util.flatten_dict(restored.get(col, {}))
    new = {}
    for k, v in flat.items():
      if k[0] in skip:
        new[k] = v
        kept.append("/".join((col, *k)))
        continue
      if k not in src:
        raise ValueError(f"{path}: lacks {col}/{'/'.join(k)}")
      if np.shape(src[k]) != np.shape(v):
        raise ValueError(
          f"{path}: {col}/{'/'.join(k)} has shape {np.shape(src[k])}, the model {np.shape(v)}"
        )
      new[k] = np.asarray(src[k], dtype=np.asarray(v).dtype)
      copied += 1
    out[col] = traverse_util.unflatten_dict(new)
  log.info("pretrained %s: %d leaves loaded, re-initialised %s", path, copied, kept)
  return out, {"path": str(path), "loaded": copied, "reinitialised": kept}
