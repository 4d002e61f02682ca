"""DARTS' NetworkCIFAR evaluation training (20 cells, C=36, auxiliary head), as a preset."""

from __future__ import annotations

import ml_collections

from dlsjax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.job_config(common.darts_cifar_model(), [str(i) for i in range(10)], seed=0)
  c.train = ml_collections.ConfigDict(
    dict(
      epochs=600,
      batch_size=96,
      lr=0.025,
      lr_min=0.0,
      momentum=0.9,
      weight_decay=3e-4,
      focal_gamma=0.0,
      focal_alpha=1.0,
      cutmix_beta=0.0,
      drop_path_max=0.2,
      crop_padding=4,
      hflip=True,
      vflip=False,
      grad_clip=5.0,  # as the DARTS evaluation code (not stated in the paper); 0 disables
      **common.run_options(),
      aux_head=True,
      aux_weight=0.4,
    )
  )
  return c
