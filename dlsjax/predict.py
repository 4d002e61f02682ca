"""Grading new specimens with a trained workdir: ``Predictor(workdir)(specimen_dir)``.

A specimen is a folder named by its id holding one image per modality
(``WL.png``, ``NIR1.tif``, ...; the dataset format's layout). Images are read
and preprocessed by the same functions as the training data (the dataset's
description and build options are copied into the training workdir), at the
model's resolution. With several trained runs the probabilities are the mean
over runs (an ensemble); the per-run values are returned too.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time

import jax
import numpy as np

from dlsjax import train
from dlsjax.data import builder, folder


class Predictor:
  """Loads the model once (and compiles its forward); each call grades one specimen."""

  def __init__(self, workdir):
    self.trained = train.load(workdir)
    self.desc = self.trained.description()
    self.opts = dataclasses.replace(
      self.trained.build_options(), preprocess="build", resolution=self.trained.spec.resolution
    )
    self._predict = jax.jit(train.make_predict_fn(self.trained.model))
    from dlsjax import supernet

    jax.block_until_ready(  # compile now: a specimen's latency excludes it
      self._predict(self.trained.variables[0], supernet.dummy_images(self.trained.spec, 1))
    )

  def images(self, specimen_dir) -> dict[str, np.ndarray]:
    """Read and preprocess one specimen folder: ``{modality: f32[1, R, R, C]}``."""
    d = pathlib.Path(specimen_dir)
    if not d.is_dir():
      raise folder.DataError(f"{d}: not a specimen folder (expected one image per modality)")
    spec = folder.Specimen(specimen_id=d.name, patient_id="", label=0, split=None, line=0)
    raw = folder.read_specimen(d.parent, self.desc, spec)
    pre = builder.preprocess_specimen(raw, self.desc, self.opts, str(d))
    return {k: v[None].astype(np.float32) for k, v in pre.items()}

  def __call__(self, specimen_dir) -> dict:
    t0 = time.perf_counter()
    images = self.images(specimen_dir)
    per_run = np.stack([np.asarray(self._predict(v, images))[0] for v in self.trained.variables])
    mean = per_run.mean(0)
    classes = list(self.desc.classes)
    return {
      "specimen": pathlib.Path(specimen_dir).name,
      "predicted": classes[int(mean.argmax())],
      "probabilities": {c: round(float(p), 6) for c, p in zip(classes, mean, strict=True)},
      "per_run": [[round(float(p), 6) for p in r] for r in per_run],
      "seconds": round(time.perf_counter() - t0, 4),
    }
