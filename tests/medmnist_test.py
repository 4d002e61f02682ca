"""The `medmnist` pipeline end to end on the BreastMNIST subset: from-npz -> demo -> metrics.

Seconds of compute (`medmnist:tiny`); the full-size runs are benchmarks (benchmarks/RESULTS.md).
"""

import json

import numpy as np
import pytest
from conftest import cli
from sklearn import metrics as skm

from dlsjax import train
from dlsjax.data import dataset


@pytest.mark.heavy
def test_medmnist_tiny_pipeline_selects_on_val_and_reports_binary_auc(tmp_path):
  folder, w = tmp_path / "folder", tmp_path / "w"
  cli("data", "from-npz", "tests/data/breastmnist_subset.npz", "--out", str(folder),
      "--modality", "US", "--classes", "malignant,benign")  # fmt: skip
  cli("demo", "--config", "medmnist:tiny", "--data-folder", str(folder), "--workdir", str(w),
      "--config.train.epochs=4")  # fmt: skip
  m = json.loads((w / "train" / "metrics.json").read_text())
  assert m["runs_evaluated"] == ["run0", "run1"]  # the config's seeds
  probs = np.load(w / "train" / "probabilities.npz")
  labels, runs = probs["labels"], probs["probs"]
  per_run = [skm.roc_auc_score(labels, p[:, 1]) for p in runs]
  assert m["mean"]["auc_binary"] == pytest.approx(np.mean(per_run))
  assert m["mean"]["auc_binary_std"] == pytest.approx(np.std(per_run, ddof=1))
  lo, hi = m["pooled"]["ci"]["auc_binary"]
  assert lo <= m["pooled"]["auc_binary"] <= hi
  report = (w / "report.md").read_text()
  assert "AUC (binary, MedMNIST)" in report
  # The model came from the data: one modality, its classes, its 28 px.
  cfg = json.loads((w / "train" / "config.json").read_text())
  assert [x["name"] for x in cfg["model"]["modalities"]] == ["US"]
  assert cfg["classes"] == ["malignant", "benign"] and cfg["model"]["resolution"] == 28

  # Model selection on the val split: the loaded weights are the best val epoch's.
  records = [json.loads(x) for x in (w / "train/run0/metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2, 3, 4]
  key = [(r["val_auc"], -r["val_loss"]) for r in records]
  best = max(range(4), key=lambda i: (key[i], -i))  # ties keep the earlier epoch
  assert records[-1]["best_epoch"] == best + 1
  trained = train.load(w / "train")
  ds = dataset.load(w / "data_built")
  validate = train._validator(trained.model, ds)
  score = validate(trained.variables[0])
  assert score["val_auc"] == pytest.approx(records[best]["val_auc"])
  assert score["val_loss"] == pytest.approx(records[best]["val_loss"], rel=1e-5)
  if best != 3:  # the last epoch's weights differ from the selected ones
    assert score["val_loss"] != pytest.approx(records[3]["val_loss"], rel=1e-6)
