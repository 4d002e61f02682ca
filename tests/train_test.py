"""Training of the derived network: paper defaults and the DropPath ramp.

The step on 4 devices under pmap and shard_map, resume and several runs: tests/demo_test.py.
"""

import jax
import numpy as np
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


def test_balanced_class_weights_and_the_weighted_focal_loss():
  import jax.numpy as jnp
  import numpy as np

  from dlsjax import losses

  assert train.class_weights([147, 399], "none") == ()
  w = train.class_weights([147, 399], "balanced")  # scikit-learn's n / (K n_k)
  assert w == pytest.approx((546 / (2 * 147), 546 / (2 * 399)))
  with pytest.raises(train.TrainError, match="class_weight must be"):
    train.class_weights([1, 2], "inverse")
  with pytest.raises(train.TrainError, match="has no training example"):
    train.class_weights([0, 2], "balanced")
  # The step weighs each example by its (soft) target's class weight.
  logits = jnp.array([[2.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
  target = jnp.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])
  per = -jnp.sum(target * jax.nn.log_softmax(logits), -1)
  ex_w = target @ jnp.asarray(w)
  got = losses.focal_loss(logits, target, gamma=0.0, weights_B=ex_w)
  np.testing.assert_allclose(got, float((per * ex_w).sum() / ex_w.sum()), rtol=1e-6)


def test_val_selection_prefers_auc_then_loss_and_keeps_the_earlier_tie():
  a = {"val_auc": 0.9, "val_loss": 0.4, "val_acc": 0.8}
  assert train.is_better("val_auc", a, None)
  assert train.is_better("val_auc", {**a, "val_auc": 0.91}, a)
  assert train.is_better("val_auc", {**a, "val_loss": 0.3}, a)  # same AUC, lower loss
  assert not train.is_better("val_auc", dict(a), a)  # a tie keeps the earlier epoch
  assert not train.is_better("val_loss", {**a, "val_auc": 0.99}, a)
  assert train.is_better("val_loss", {**a, "val_loss": 0.39}, a)
  score = train.val_score([0, 1, 1], [[0.8, 0.2], [0.4, 0.6], [0.7, 0.3]])
  assert score["val_auc"] == pytest.approx(1.0) and score["val_acc"] == pytest.approx(2 / 3)
  assert score["val_loss"] == pytest.approx(-(np.log(0.8) + np.log(0.6) + np.log(0.3)) / 3)


def test_weight_average_follows_the_formula_and_is_what_inference_uses():
  import dataclasses

  import jax
  from bilevel_test import batch
  from conftest import tiny_spec
  from genotype_test import random_choice

  from dlsjax import network, train

  spec = tiny_spec()
  model = network.Network(spec, genotype=random_choice(spec))
  h = train.TrainHParams(steps_per_epoch=2, epochs=2, batch_size=8, ema_decay=0.9)
  state = train.init_state(model, h, jax.random.PRNGKey(0))
  assert "ema" not in train.init_state(model, dataclasses.replace(h, ema_decay=0.0),
                                       jax.random.PRNGKey(0))  # fmt: skip
  step = jax.jit(train.make_train_step(model, h, axis_name=None))
  ema = jax.tree.map(np.asarray, state["params"])
  for t in range(3):
    state, _ = step(state, batch(spec, 8, t), jax.random.PRNGKey(1))
    d = min(0.9, (1 + t) / (10 + t))
    ema = jax.tree.map(lambda e, p, d=d: d * e + (1 - d) * np.asarray(p), ema, state["params"])
  for a, b in zip(jax.tree.leaves(state["ema"]), jax.tree.leaves(ema), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  moved = [np.abs(np.asarray(a) - b).max() for a, b in
           zip(jax.tree.leaves(state["params"]), jax.tree.leaves(ema), strict=True)]  # fmt: skip
  assert max(moved) > 1e-4  # the average lags the weights
  v = train.inference_variables(state)
  assert v["params"] is state["ema"] and v["batch_stats"] is state["batch_stats"]


@pytest.mark.heavy
def test_a_non_finite_loss_stops_search_and_training_naming_the_step(tmp_path, monkeypatch):
  """With a loss that is NaN from the first step, neither job runs on: each stops at epoch 1,
  batch 1 with an error naming the step and the checkpoint kept (a check that is removed or
  skipped lets the job finish, and this test fails)."""
  from conftest import TINY_PIPELINE, built_breast_subset
  from genotype_test import random_choice

  from dlsjax import genotype, losses, netspec, search
  from dlsjax.configs import load as load_config

  data = built_breast_subset(tmp_path / "data")
  config = load_config("demo", TINY_PIPELINE)
  config.search.epochs = 2
  monkeypatch.setattr(
    losses, "focal_loss", lambda logits, target, **kw: float("nan") * logits.sum()
  )
  with pytest.raises(search.SearchError, match=r"non-finite loss at epoch 1, batch 1 \(global"):
    search.search(config, data, tmp_path / "search", progress=False)
  assert not (tmp_path / "search" / "alphas.npz").exists()

  fitted = config.copy_and_resolve_references()
  spec = netspec.spec_from_config(fitted.model, phase="train")
  choice = random_choice(spec, seed=1)
  geno = genotype.Genotype.from_choice(choice, spec.topologies(), spec.op_set)
  geno.save(tmp_path / "genotype.json")
  with pytest.raises(train.TrainError, match=r"non-finite loss at epoch 1, batch 1;"):
    train.train(config, tmp_path / "genotype.json", data, tmp_path / "train", progress=False)
  assert not (tmp_path / "train" / "run0" / "metrics.jsonl").exists()
