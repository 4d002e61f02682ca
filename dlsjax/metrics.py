"""Evaluation metrics on host arrays (numpy): ROC AUC, ROC curves, confusion, bootstrap CIs.

``roc_auc_micro`` is scikit-learn's ``roc_auc_score(one_hot, probs,
average="micro")``: every (example, class) pair is one binary decision, and
the AUC of the pooled scores is the Mann-Whitney statistic with tied scores
counted one half (the trapezoidal area under the ROC curve).
"""

from __future__ import annotations

import numpy as np


def roc_auc_binary(y_true, scores) -> float:
  """Area under the ROC curve of binary labels ``y_true`` (0/1) and ``scores``.

  NaN when only one class is present (scikit-learn raises there).
  """
  y = np.asarray(y_true).astype(bool).ravel()
  s = np.asarray(scores, np.float64).ravel()
  n_pos, n_neg = int(y.sum()), int((~y).sum())
  if n_pos == 0 or n_neg == 0:
    return float("nan")
  order = np.argsort(s, kind="mergesort")
  s_sorted = s[order]
  ranks = np.empty(len(s), np.float64)
  # Average ranks (1-based) over runs of tied scores.
  starts = np.r_[0, np.flatnonzero(np.diff(s_sorted)) + 1]
  ends = np.r_[starts[1:], len(s)]
  avg = (starts + ends + 1) / 2.0
  ranks[order] = np.repeat(avg, ends - starts)
  return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_auc_micro(one_hot, probs) -> float:
  """Micro-averaged AUC: the binary AUC of all (example, class) pairs pooled."""
  return roc_auc_binary(np.asarray(one_hot).ravel(), np.asarray(probs).ravel())


def roc_curve(y_true, scores) -> tuple[np.ndarray, np.ndarray]:
  """False and true positive rates at every distinct threshold, from (0, 0) to (1, 1)."""
  y = np.asarray(y_true).astype(bool).ravel()
  s = np.asarray(scores, np.float64).ravel()
  order = np.argsort(-s, kind="mergesort")
  s, y = s[order], y[order]
  last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # last index of each distinct score
  tps = np.cumsum(y)[last]
  fps = (last + 1) - tps
  p, n = max(int(y.sum()), 1), max(int((~y).sum()), 1)
  return np.r_[0.0, fps / n], np.r_[0.0, tps / p]


def roc_curve_micro(labels, probs) -> tuple[np.ndarray, np.ndarray]:
  """Micro-averaged ROC: every (example, class) pair is one binary decision."""
  probs = np.asarray(probs)
  return roc_curve(np.eye(probs.shape[1])[np.asarray(labels)].ravel(), probs.ravel())


def confusion_matrix(labels, predictions, num_classes: int) -> np.ndarray:
  """``m[i, j]``: examples of true class ``i`` predicted as ``j``."""
  m = np.zeros((num_classes, num_classes), np.int64)
  np.add.at(m, (np.asarray(labels), np.asarray(predictions)), 1)
  return m


def classification_metrics(labels, probs) -> dict:
  """ACC, micro-averaged AUC, one-vs-rest AUC per class and the confusion matrix."""
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  k = probs.shape[1]
  one_hot = np.eye(k)[labels]
  pred = probs.argmax(1)
  return {
    "acc": float((pred == labels).mean()),
    "auc_micro": roc_auc_micro(one_hot, probs),
    "auc_per_class": [roc_auc_binary(one_hot[:, c], probs[:, c]) for c in range(k)],
    "confusion": confusion_matrix(labels, pred, k).tolist(),
    "n": int(len(labels)),
  }


def bootstrap_ci(
  labels, probs, *, trials: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
  """Percentile bootstrap CIs of ACC and micro-AUC: ``trials`` resamples with replacement.

  Deterministic for a seed. Resamples where the AUC is undefined (one class
  only) are left out of the AUC interval.
  """
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  k = probs.shape[1]
  one_hot = np.eye(k)[labels]
  correct = probs.argmax(1) == labels
  rng = np.random.default_rng(seed)
  acc, auc = np.empty(trials), np.empty(trials)
  for t in range(trials):
    idx = rng.integers(0, len(labels), len(labels))
    acc[t] = correct[idx].mean()
    auc[t] = roc_auc_micro(one_hot[idx], probs[idx])
  q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
  auc = auc[np.isfinite(auc)]
  return {
    "acc": [float(x) for x in np.percentile(acc, q)],
    "auc_micro": [float(x) for x in np.percentile(auc, q)] if len(auc) else [np.nan, np.nan],
    "trials": trials,
    "seed": seed,
  }


def roc_band(labels, probs, *, trials: int = 1000, seed: int = 0, grid: int = 101) -> dict:
  """Micro ROC on a fixed FPR grid with its bootstrap 95% band (for the ROC figure)."""
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  fpr_grid = np.linspace(0, 1, grid)

  def curve(idx):
    fpr, tpr = roc_curve_micro(labels[idx], probs[idx])
    return np.interp(fpr_grid, fpr, tpr)

  rng = np.random.default_rng(seed)
  boots = np.stack([curve(rng.integers(0, len(labels), len(labels))) for _ in range(trials)])
  return {
    "fpr": fpr_grid,
    "tpr": curve(np.arange(len(labels))),
    "low": np.percentile(boots, 2.5, axis=0),
    "high": np.percentile(boots, 97.5, axis=0),
  }
