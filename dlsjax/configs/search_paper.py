"""DLS-DARTS search, paper preset (Section III-B).

    dlsjax search --config paper --data-dir DATA --workdir RUN

``get_config("runlocal")`` is a tiny variant for smoke tests.
"""

from __future__ import annotations

import ml_collections

from dlsjax.configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.job_config(common.paper_model(), common.PAPER_CLASSES, seed=0)
  c.search = ml_collections.ConfigDict(
    dict(
      epochs=50,
      batch_size=16,
      order="first",  # first | second
      w_lr=2.5e-3,
      w_lr_min=1e-5,  # cosine annealing floor
      w_momentum=0.9,
      w_weight_decay=3e-4,
      grad_clip=5.0,  # as in DARTS
      alpha_lr=6e-4,
      alpha_weight_decay=1e-3,
      alpha_b1=0.5,
      alpha_b2=0.999,
      alpha_warmup_epochs=0,  # paper: the alphas move from the first step
      focal_gamma=2.0,
      focal_alpha=1.0,
      fuse_phases=True,  # first order: both phases in one compiled fwd+bwd (bilevel.py)
      fuse_second_order=True,  # second order the same: ~30% faster compile, 20% less memory
      mixed_product="fwd_rev",  # or "rev_fwd": same numbers, order of autodiff
      drop_path=0.2,  # fixed during search
      crop_padding=8,
      hflip=True,
      vflip=True,
      **common.run_options(),
    )
  )
  c.derive = common.derive_config(batch_size=c.search.batch_size)
  if arg == "runlocal":
    c.model.c_sin_search = 8
    c.model.resolution = 16
    c.search.epochs = 1
    c.search.batch_size = 4
  return c
