"""DLS-DARTS search, paper preset (Section III-B).

    dlsjax search --config paper --data-dir DATA --workdir RUN

``get_config("tiny")`` (``--config paper:tiny``) is the small variant for smoke tests.
"""

from __future__ import annotations

import ml_collections

from dlsjax import bilevel
from dlsjax.configs import common
from dlsjax.data import pipeline


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = common.job_config(common.paper_model(), common.PAPER_CLASSES, seed=0)
  # The paper's search hyper-parameters are the defaults of bilevel.SearchHParams (documented
  # there, field by field) and its augmentation those of pipeline.Augment (8-px crop, both
  # flips, no CutMix in the search): written once, read here.
  c.search = ml_collections.ConfigDict(
    dict(
      **common.defaults(bilevel.SearchHParams, drop=("steps_per_epoch",)),
      batch_size=16,
      **common.defaults(pipeline.Augment, drop=("cutmix_beta", "cutmix_prob")),
      **common.run_options(),
    )
  )
  c.derive = common.derive_config(batch_size=c.search.batch_size)
  if arg == "tiny":  # the one name of every config's small variant
    c.model.c_sin_search = 8
    c.model.resolution = 16
    c.search.epochs = 1
    c.search.batch_size = 4
  elif arg is not None:
    raise ValueError(f"unknown variant {arg!r} of this config (tiny)")
  return c
