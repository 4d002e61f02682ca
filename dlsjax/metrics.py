"""Evaluation metrics on host arrays (numpy): ROC AUC.

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
