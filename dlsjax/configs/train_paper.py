"""Training of the derived (NAS-based) model, paper preset (Section III-B).

dlsjax train --genotype RUN/genotype.json --data-dir DATA --workdir TRAIN --config paper_train
"""

from __future__ import annotations

import ml_collections

from dlsjax import train
from dlsjax.configs import common
from dlsjax.data import pipeline


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.job_config(common.paper_model(), common.PAPER_CLASSES, seed=0)
  # The paper's training hyper-parameters are the defaults of train.TrainHParams (documented
  # there, field by field) and its augmentation pipeline.Augment's with CutMix 1.0: written
  # once, read here.
  c.train = ml_collections.ConfigDict(
    dict(
      **common.defaults(train.TrainHParams, drop=("steps_per_epoch", "class_weights")),
      **common.defaults(pipeline.Augment, drop=("cutmix_beta", "cutmix_prob")),
      cutmix_beta=1.0,  # paper: CutMix in training
      # Not in the paper (it trains a fixed schedule and reports the end): which epoch's
      # weights are the model. last (paper) | val_auc | val_loss: the best epoch on the
      # val split, evaluated after every epoch (never the test split).
      select="last",
      **common.run_options(),
    )
  )
  if arg == "tiny":  # the one name of every config's small variant
    c.model.c_sin_train = 8
    c.model.resolution = 16
    c.train.epochs = 1
    c.train.batch_size = 4
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of this config (tiny)")
  return c
