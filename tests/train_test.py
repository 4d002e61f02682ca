"""Training of the derived network: paper defaults and the DropPath ramp.

The step on 4 devices under pmap and shard_map, resume and several runs: tests/demo_test.py.
"""

import pytest

from dlsjax import train
from dlsjax.configs import get_config


def test_paper_training_defaults():
  c = get_config("paper_train")
  h = train.TrainHParams.from_config(c.train, steps_per_epoch=10)
  assert (h.epochs, h.batch_size, h.momentum, h.weight_decay, h.lr_min) == (
    110, 128, 0.9, 1e-5, 1e-5
  )  # fmt: skip
  assert (h.focal_gamma, h.focal_alpha, h.drop_path_max) == (2.0, 1.0, 0.2)
  assert c.train.cutmix_beta == 1.0 and c.train.crop_padding == 8
  assert c.train.hflip and c.train.vflip
  assert (c.model.c_sin_train, c.model.k_train) == (144, 1)
  # DropPath ramps linearly per epoch from 0 to max * (epochs - 1) / epochs.
  assert [h.drop_prob(s) for s in (0, 9, 10, 1099)] == pytest.approx(
    [0, 0, 0.2 / 110, 0.2 * 109 / 110]
  )
