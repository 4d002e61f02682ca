"""Training of the derived (NAS-based) model, paper preset (Section III-B).

dlsjax train --genotype RUN/genotype.json --data-dir DATA --workdir TRAIN --config paper_train
"""

from __future__ import annotations

import ml_collections

from dlsjax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.job_config(common.paper_model(), common.PAPER_CLASSES, seed=0)
  c.train = ml_collections.ConfigDict(
    dict(
      epochs=110,
      batch_size=128,
      lr=2.5e-3,  # not restated for training in the paper; the search value is kept
      lr_min=1e-5,
      momentum=0.9,
      weight_decay=1e-5,
      focal_gamma=2.0,
      focal_alpha=1.0,
      cutmix_beta=1.0,
      drop_path_max=0.2,  # ramped linearly over the epochs
      crop_padding=8,
      hflip=True,
      vflip=True,
      grad_clip=5.0,  # as the DARTS evaluation code (not stated in the paper); 0 disables
      # Not in the paper (it trains a fixed schedule and reports the end): which epoch's
      # weights are the model. last (paper) | val_auc | val_loss: the best epoch on the
      # val split, evaluated after every epoch (never the test split).
      select="last",
      class_weight="none",  # none (paper: focal alpha 1) | balanced (n / (K n_k) per class)
      ema_decay=0.0,  # not in the paper: 0 (off) or the decay of a weight average used for eval
      **common.run_options(),
      aux_head=False,
    )
  )
  if arg == "runlocal":
    c.model.c_sin_train = 8
    c.model.resolution = 16
    c.train.epochs = 1
    c.train.batch_size = 4
  return c
