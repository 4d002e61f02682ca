"""Evaluation metrics on host arrays (numpy): ROC AUC, ROC curves, confusion, bootstrap CIs.

``roc_auc_micro`` is scikit-learn's ``roc_auc_score(one_hot, probs,
average="micro")``: every (example, class) pair is one binary decision, and
the AUC of the pooled scores is the Mann-Whitney statistic with tied scores
counted one half (the trapezoidal area under the ROC curve).

For two classes MedMNIST (and most of the medical literature) reports the
ordinary binary AUC of the positive class's score instead, scikit-learn's
``roc_auc_score(labels, probs[:, 1])``: ``auc_binary`` here, with class 1 the
positive class. It is not comparable to the micro-average, which pools both
one-hot columns.
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


def auc_keys(num_classes: int) -> tuple[str, ...]:
  """The AUCs reported for ``num_classes``: micro always, binary (MedMNIST's) for two classes."""
  return ("auc_micro", "auc_binary") if num_classes == 2 else ("auc_micro",)


def classification_metrics(labels, probs) -> dict:
  """ACC, micro-averaged AUC, one-vs-rest AUC per class and the confusion matrix.

  With two classes also ``auc_binary``: the AUC of ``probs[:, 1]`` for label 1.
  """
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  k = probs.shape[1]
  one_hot = np.eye(k)[labels]
  pred = probs.argmax(1)
  out = {
    "acc": float((pred == labels).mean()),
    "auc_micro": roc_auc_micro(one_hot, probs),
  }
  if k == 2:
    out["auc_binary"] = roc_auc_binary(labels == 1, probs[:, 1])
  out.update(
    auc_per_class=[roc_auc_binary(one_hot[:, c], probs[:, c]) for c in range(k)],
    confusion=confusion_matrix(labels, pred, k).tolist(),
    n=int(len(labels)),
  )
  return out


def bootstrap_ci(
  labels, probs, *, trials: int = 1000, seed: int = 0, level: float = 0.95
) -> dict[str, list[float]]:
  """Percentile bootstrap CIs of ACC and the AUCs of ``auc_keys``: ``trials`` resamples.

  Resamples with replacement; deterministic for a seed. Resamples where an AUC
  is undefined (one class only) are left out of that AUC's interval.
  """
  labels, probs = np.asarray(labels), np.asarray(probs, np.float64)
  k = probs.shape[1]
  one_hot = np.eye(k)[labels]
  correct = probs.argmax(1) == labels
  keys = auc_keys(k)
  rng = np.random.default_rng(seed)
  acc, auc = np.empty(trials), {key: np.empty(trials) for key in keys}
  for t in range(trials):
    idx = rng.integers(0, len(labels), len(labels))
    acc[t] = correct[idx].mean()
    auc["auc_micro"][t] = roc_auc_micro(one_hot[idx], probs[idx])
    if "auc_binary" in auc:
      auc["auc_binary"][t] = roc_auc_binary(labels[idx] == 1, probs[idx, 1])
  q = [(1 - level) / 2 * 100, (1 + level) / 2 * 100]
  out = {"acc": [float(x) for x in np.percentile(acc, q)]}
  for key, values in auc.items():
    values = values[np.isfinite(values)]
    out[key] = [float(x) for x in np.percentile(values, q)] if len(values) else [np.nan, np.nan]
  return {**out, "trials": trials, "seed": seed}


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
