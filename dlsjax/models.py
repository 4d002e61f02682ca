"""Every trainable architecture by name: ``dlsjax train --config paper_train:NAME``.

* ``dls_darts``: the derived DLS-DARTS network (needs a genotype).
* ``mmnas``: MMNAS (Peng et al.) adapted to the optical modalities as the
  paper's Section IV-A describes (needs a genotype from an MMNAS search; the
  preset below sets its search space).
* the baselines of :mod:`dlsjax.baselines` (``resnet18``, ``efficientnet_b0``,
  ``pyramidnet_shakedrop``), trained from scratch on the concatenated modalities.

A model is chosen by its config: ``--config paper_train:resnet18`` (a model name is a
variant of every config, ``dlsjax/configs``), which runs ``apply_preset(config, name)``:
it writes the name into ``config.model.arch`` (and for MMNAS its search space);
``build(config, choice)`` makes the module.
"""

from __future__ import annotations

from dlsjax import baselines, derived_net, netspec

NAS_MODELS = ("dls_darts", "mmnas")

# MMNAS adapted (paper Section IV-A). Stated there: a DARTS-based search with a
# normal cell at the beginning that fuses the modalities, then reduction cells
# only; the modes joined by concatenation instead of MMNAS' element-wise sum;
# a stem for the fluorescence images in which NIR-I and NIR-II are concatenated
# and seen as one input; its candidate set is the 10-op set (Table IV, set c).
# Inferred here (MMNAS' code is not public): the per-modality 3x3 stems are
# DLS-DARTS' manual stems; "concatenation" is the concat + 1x1 ReLU-conv-BN of
# the stem ablations for both the fused input and the fluorescence input; the
# first (normal) cell takes (fluorescence, fused) as (s0, s1); the reduction
# cells are ``model.k_r`` (3: 64 -> 8 px, as DLS-DARTS); derivation is DARTS'
# argmax; the search hyper-parameters are DLS-DARTS'.
MMNAS_MODEL = dict(
  layout="mmnas", fusing_stem="concat", fl_stem="concat", fl_stem_cells=1, op_set="paper10"
)
MMNAS_DERIVE = dict(method="argmax")


def names() -> tuple[str, ...]:
  return (*NAS_MODELS, *baselines.BASELINES)


def arch(config) -> str:
  return config.model.get("arch", "dls_darts")


def needs_genotype(name: str) -> bool:
  return name in NAS_MODELS


def apply_preset(config, name: str):
  """Set ``config.model.arch`` (and MMNAS' search space); returns ``config``."""
  if name not in names():
    raise ValueError(f"unknown model {name!r}; available: {list(names())}")
  config.model.arch = name
  if name == "mmnas":
    config.model.update(MMNAS_MODEL)
    if "derive" in config:
      config.derive.update(MMNAS_DERIVE)
  return config


def check_arch(config) -> None:
  """``model.arch`` names a model, and ``mmnas`` comes with its search space (set by the
  ``:mmnas`` variant, not by the arch field alone)."""
  if "model" not in config:
    return
  name = arch(config)
  if name not in names():
    raise ValueError(f"model.arch: unknown model {name!r}; available: {list(names())}")
  if name == "mmnas" and config.model.get("layout") != MMNAS_MODEL["layout"]:
    raise ValueError(
      "model.arch=mmnas needs MMNAS' search space: name the model as a config variant "
      "(--config paper:mmnas, --config paper_train:mmnas)"
    )


def baseline_overrides(config, name: str) -> dict:
  table = config.model.get("baselines", None)
  sub = table.get(name, None) if table is not None else None
  return sub.to_dict() if hasattr(sub, "to_dict") else dict(sub or {})


def build(config, spec: netspec.NetworkSpec, choice=None, *, aux_head=False, bn_axis_name=None):
  """The module of ``config.model.arch`` for ``spec`` (train phase)."""
  name = arch(config)
  if name in NAS_MODELS:
    if choice is None:
      raise ValueError(f"model {name!r} needs a genotype (--genotype)")
    return derived_net.make_derived_net(spec, choice, aux_head=aux_head, bn_axis_name=bn_axis_name)
  return baselines.build(name, spec, baseline_overrides(config, name), bn_axis_name=bn_axis_name)
