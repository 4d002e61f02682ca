"""Training of the derived network: paper defaults, DropPath ramp, the step on 1 vs 4 devices."""

import jax
import numpy as np
import pytest
from conftest import cells_only_spec

from dlsjax import genotype, sharding, train
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


@pytest.mark.heavy
def test_train_step_one_device_equals_four():
  spec = cells_only_spec()
  rng = np.random.default_rng(0)
  alphas = {
    p: rng.normal(size=(t.num_edges, len(spec.op_set))) for p, t in spec.topologies().items()
  }
  choice = genotype.derive_argmax(alphas, spec.topologies(), spec.op_set)
  h = train.TrainHParams(epochs=2, steps_per_epoch=2, drop_path_max=0.0, lr=0.05)
  state = train.init_state(train.make_model(spec, choice, h, axis=None), h, jax.random.PRNGKey(0))
  batch = {
    "images": {
      m.name: rng.random((8, spec.resolution, spec.resolution, m.channels), np.float32)
      for m in spec.modalities
    },  # fmt: skip
    "label": rng.integers(0, spec.num_classes, 8).astype(np.int32),
  }
  batch["target"] = np.eye(spec.num_classes, dtype=np.float32)[batch["label"]]
  results = []
  for n in (1, 4):
    runner = sharding.Runner(
      train.make_train_step(train.make_model(spec, choice, h), h),
      devices=jax.local_devices()[:n],
      donate=False,
      in_kinds=(sharding.REPLICATED, sharding.BATCH, sharding.HOST),
    )
    s = runner.replicate(state)
    losses = []
    for _ in range(3):
      s, m = runner(s, runner.shard_batch(batch), jax.random.PRNGKey(1))
      losses.append(float(m["loss"]))
    results.append((runner.unreplicate(s), losses))
  (a, la), (b, lb) = results
  np.testing.assert_allclose(la, lb, rtol=2e-5)
  assert la[-1] < la[0]  # it learns the batch
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, rtol=2e-4, atol=2e-5)
