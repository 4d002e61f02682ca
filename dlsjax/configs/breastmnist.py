"""The pipeline on BreastMNIST (MedMNIST v2, 28x28 ultrasound, 2 classes), a CPU budget.

    dlsjax data from-npz ../shared/data/breastmnist/breastmnist.npz --out BM --modality US \\
      --classes malignant,normal_or_benign
    dlsjax demo --config breastmnist --data-folder BM --workdir runs/breastmnist

One modality, so the Fusing Stem has one input and there is no FL Stem (it
needs fluorescence images). The paper's search space and settings otherwise,
at the resolution of the data and a budget that runs on a 2-core CPU.
"""

from __future__ import annotations

import ml_collections

from dlsjax.configs import get_config as named


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = named("demo")
  c.classes = ["malignant", "normal_or_benign"]
  m, s, t = c.model, c.search, c.train
  m.modalities = [{"name": "US", "channels": 3, "fluorescence": False}]
  m.num_classes = 2
  m.fl_stem = "off"
  m.resolution = 28  # the data's; the paper resizes its images to 64
  m.c_sin_search = 4
  m.c_sin_train = 16
  s.epochs = 6
  t.epochs = 20
  t.batch_size = 64
  c.derive.max_images = 32
  return c
