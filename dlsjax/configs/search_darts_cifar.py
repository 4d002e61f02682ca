"""The original DARTS CIFAR-10 search (first order by default), as a preset.

8 cells (reductions at 2 and 5), C=16, 4 inner nodes, 8 ops, batch 64, 32x32.
"""

from __future__ import annotations

import ml_collections

from dlsjax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.job_config(common.darts_cifar_model(), [str(i) for i in range(10)], seed=2)
  c.search = ml_collections.ConfigDict(
    dict(
      epochs=50,
      batch_size=64,
      order="first",
      w_lr=0.025,
      w_lr_min=0.001,
      w_momentum=0.9,
      w_weight_decay=3e-4,
      grad_clip=5.0,
      alpha_lr=3e-4,
      alpha_weight_decay=1e-3,
      alpha_b1=0.5,
      alpha_b2=0.999,
      alpha_warmup_epochs=0,  # DARTS: none
      focal_gamma=0.0,  # DARTS uses cross-entropy
      focal_alpha=1.0,
      drop_path=0.0,
      crop_padding=4,
      hflip=True,
      vflip=False,
      **common.run_options(),
    )
  )
  c.derive = common.derive_config(batch_size=c.search.batch_size)
  return c
