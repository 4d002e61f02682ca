"""Evaluation metrics against scikit-learn, and the bootstrap's determinism."""

import numpy as np
import pytest
from sklearn import metrics as skm

from dlsjax import metrics


def _random_case(rng, n, k, ties=False):
  labels = rng.integers(0, k, n)
  probs = rng.dirichlet(np.ones(k), n)
  if ties:
    probs = np.round(probs, 1)  # many tied scores
  return labels, probs


@pytest.mark.parametrize("n,k,ties", [(50, 4, False), (200, 2, False), (37, 3, True), (8, 4, True)])
def test_micro_and_per_class_auc_equal_scikit_learn(n, k, ties):
  labels, probs = _random_case(np.random.default_rng(n + k), n, k, ties)
  one_hot = np.eye(k)[labels]
  m = metrics.classification_metrics(labels, probs)
  assert m["auc_micro"] == pytest.approx(skm.roc_auc_score(one_hot, probs, average="micro"))
  for c in range(k):
    if 0 < one_hot[:, c].sum() < n:
      assert m["auc_per_class"][c] == pytest.approx(skm.roc_auc_score(one_hot[:, c], probs[:, c]))
  assert m["acc"] == pytest.approx(skm.accuracy_score(labels, probs.argmax(1)))
  np.testing.assert_array_equal(
    m["confusion"], skm.confusion_matrix(labels, probs.argmax(1), labels=list(range(k)))
  )


def test_auc_edge_cases():
  # Perfect, inverted and constant scores; a class absent from the labels.
  y = np.array([0, 0, 1, 1])
  assert metrics.roc_auc_binary(y, [0.1, 0.2, 0.8, 0.9]) == 1.0
  assert metrics.roc_auc_binary(y, [0.9, 0.8, 0.2, 0.1]) == 0.0
  assert metrics.roc_auc_binary(y, [0.5, 0.5, 0.5, 0.5]) == 0.5
  assert np.isnan(metrics.roc_auc_binary([1, 1, 1], [0.1, 0.2, 0.3]))
  labels = np.array([0, 0, 1, 1, 0])  # class 2 never occurs: micro AUC is still defined
  probs = np.array([[0.7, 0.2, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1], [0.6, 0.3, 0.1], [1, 0, 0]])
  one_hot = np.eye(3)[labels]
  got = metrics.classification_metrics(labels, probs)
  assert got["auc_micro"] == pytest.approx(skm.roc_auc_score(one_hot, probs, average="micro"))
  assert np.isnan(got["auc_per_class"][2])


def test_roc_curve_equals_scikit_learn():
  rng = np.random.default_rng(3)
  y = rng.integers(0, 2, 60)
  s = np.round(rng.random(60), 1)
  fpr, tpr = metrics.roc_curve(y, s)
  sk_fpr, sk_tpr, _ = skm.roc_curve(y, s, drop_intermediate=False)
  np.testing.assert_allclose(fpr, sk_fpr)
  np.testing.assert_allclose(tpr, sk_tpr)
  assert np.trapezoid(tpr, fpr) == pytest.approx(skm.roc_auc_score(y, s))
  labels, probs = _random_case(rng, 40, 3)  # micro: the area is scikit-learn's micro AUC
  fpr, tpr = metrics.roc_curve_micro(labels, probs)
  want = skm.roc_auc_score(np.eye(3)[labels], probs, average="micro")
  assert np.trapezoid(tpr, fpr) == pytest.approx(want)


def test_bootstrap_is_seeded_and_brackets_the_estimate():
  labels, probs = _random_case(np.random.default_rng(0), 80, 4)
  probs[np.arange(80), labels] += 0.5  # informative scores
  a = metrics.bootstrap_ci(labels, probs, trials=200, seed=1)
  assert a == metrics.bootstrap_ci(labels, probs, trials=200, seed=1)
  assert a != metrics.bootstrap_ci(labels, probs, trials=200, seed=2)
  m = metrics.classification_metrics(labels, probs)
  for key in ("acc", "auc_micro"):
    lo, hi = a[key]
    assert lo < m[key] < hi and hi - lo < 0.5
  band = metrics.roc_band(labels, probs, trials=50, seed=0)
  assert np.all(band["low"] <= band["high"] + 1e-12) and band["tpr"][-1] == 1.0


@pytest.mark.parametrize("ties", [False, True])
def test_binary_auc_is_medmnists_metric_and_differs_from_micro(ties):
  # MedMNIST reports roc_auc_score(labels, probs[:, 1]) for two classes.
  labels, probs = _random_case(np.random.default_rng(7), 120, 2, ties)
  probs[labels == 1, 1] += 0.3  # informative, and not symmetric in the two columns
  probs /= probs.sum(1, keepdims=True)
  m = metrics.classification_metrics(labels, probs)
  assert m["auc_binary"] == pytest.approx(skm.roc_auc_score(labels, probs[:, 1]))
  assert m["auc_binary"] != pytest.approx(m["auc_micro"])
  assert "auc_binary" not in metrics.classification_metrics(
    *_random_case(np.random.default_rng(1), 30, 3)
  )
  ci = metrics.bootstrap_ci(labels, probs, trials=200, seed=0)
  lo, hi = ci["auc_binary"]
  assert lo < m["auc_binary"] < hi and ci["auc_binary"] != ci["auc_micro"]


def test_summarise_carries_binary_auc_in_mean_and_pooled():
  from dlsjax import evaluate

  rng = np.random.default_rng(2)
  labels = rng.integers(0, 2, 60)
  runs = np.stack([rng.dirichlet(np.ones(2), 60) for _ in range(3)])
  out = evaluate.summarise(labels, runs, trials=50)
  per_run = [skm.roc_auc_score(labels, p[:, 1]) for p in runs]
  assert out["mean"]["auc_binary"] == pytest.approx(np.mean(per_run))
  assert out["mean"]["auc_binary_std"] == pytest.approx(np.std(per_run, ddof=1))
  pooled = skm.roc_auc_score(np.tile(labels, 3), np.concatenate(runs)[:, 1])
  assert out["pooled"]["auc_binary"] == pytest.approx(pooled)
  assert len(out["pooled"]["ci"]["auc_binary"]) == 2
