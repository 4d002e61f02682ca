"""The model config fitted to a built dataset: what the data decides, the config need not repeat.

``model.modalities``, ``model.num_classes``, ``classes`` and
``model.resolution`` set to ``None`` in a config mean "the dataset's":
``fit_config(config, ds)`` fills them from the built dataset (names, channels
after preprocessing, fluorescence flags, class names, build resolution), so
``dlsjax search --config demo --data-dir ANY`` needs no ``--config.model.*`` overrides. A value a
config pins is kept and checked: a pinned value the dataset contradicts is an
error naming the field (``check_data_matches_model``); class names are only
labels, so the dataset's replace a pinned list of the same length (logged).
The FL Stem follows the fluorescence flags (``netspec`` omits it, with a log
line, when there are none).
"""

from __future__ import annotations

import logging

from dlsjax.data.dataset import Dataset
from dlsjax.data.folder import DataError

log = logging.getLogger(__name__)

FROM_DATA = ("model.modalities", "model.num_classes", "classes", "model.resolution")


def fit_config(config, ds: Dataset):
  """A copy of ``config`` with every ``None`` field of ``FROM_DATA`` set from ``ds``."""
  from dlsjax import netspec

  c = config.copy_and_resolve_references()
  filled = []
  if c.model.get("modalities") is None:
    c.model.modalities = [
      {"name": m.name, "channels": ds.opts.channels_of(m), "fluorescence": m.fluorescence}
      for m in ds.desc.modalities
    ]
    filled.append(f"modalities {[m['name'] for m in c.model.modalities]}")
  if c.get("classes") is None:
    c.classes = list(ds.desc.classes)
    filled.append(f"classes {c.classes}")
  if c.model.get("num_classes") is None:
    c.model.num_classes = len(ds.desc.classes)
    filled.append(f"num_classes {c.model.num_classes}")
  if c.model.get("resolution") is None:
    if ds.opts.preprocess != "build":
      raise DataError(
        f"{ds.data_dir}: preprocessed on the fly, so it has no fixed resolution; set "
        "model.resolution"
      )
    c.model.resolution = int(ds.opts.resolution)
    filled.append(f"resolution {c.model.resolution}")
  if filled:
    log.info("model fitted to %s: %s", ds.data_dir, "; ".join(filled))
  check_data_matches_model(ds, netspec.spec_from_config(c.model, phase="train"))
  if list(c.classes) != list(ds.desc.classes):  # names only label outputs: the data's win
    log.warning(
      "%s: class names %s replace the config's %s (same count)",
      ds.data_dir, list(ds.desc.classes), list(c.classes),
    )  # fmt: skip
    c.classes = list(ds.desc.classes)
  return c


def check_data_matches_model(ds: Dataset, spec) -> None:
  """The dataset's modalities, channels, classes and resolution fit the model ``spec``."""
  want = {m.name: m.channels for m in spec.modalities}
  have = {m.name: ds.opts.channels_of(m) for m in ds.desc.modalities}
  missing = [m for m in want if m not in have]
  if missing:
    raise DataError(
      f"{ds.data_dir}: model.modalities needs {missing}, the dataset has {sorted(have)} "
      "(set model.modalities to None to take the dataset's, or to the dataset's)"
    )
  for name, c in want.items():
    if have[name] != c:
      raise DataError(
        f"{ds.data_dir}: modality {name} has {have[name]} channels after preprocessing, "
        f"model.modalities says {c}"
      )
  if len(ds.desc.classes) != spec.num_classes:
    raise DataError(
      f"{ds.data_dir}: {len(ds.desc.classes)} classes {list(ds.desc.classes)}, "
      f"model.num_classes is {spec.num_classes}"
    )
  ds.check_resolution(spec.resolution)
