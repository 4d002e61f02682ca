"""Evaluation of a trained workdir: ``evaluate(workdir, split="test")``.

As the paper's Table I and Fig. 3: ACC and micro-averaged AUC (scikit-learn's
definition, ``metrics.py``) with 95% CIs from 1000 seeded bootstrap resamples,
per-class one-vs-rest AUC and the confusion matrix, for every run; with several
runs, the mean and standard deviation over runs, and CIs, ROC curves and the
confusion matrix of the runs' predictions concatenated. Model columns:
parameters (M), FLOPs (G, XLA's count: 2 per multiply-add) and throughput
(images/s at batch 128 on this machine's first device).

Writes ``metrics.json``, ``predictions.csv``, ``probabilities.npz`` (labels and
every run's probabilities), ``roc_micro.png``,
``roc_per_class.png`` and ``confusion.png`` to the workdir (or ``out``).
"""

from __future__ import annotations

import json
import pathlib
import time

import jax
import numpy as np

from dlsjax import describe, metrics, plots, supernet, train


def predict_split(trained: train.Trained, data_dir, split: str, batch_size: int = 64):
  """``(labels [N], probs [runs, N, K], specimen_ids)`` of every example of ``split``."""
  from dlsjax.data import dataset, pipeline
  from dlsjax.data.fit import check_data_matches_model

  ds = dataset.load(data_dir)
  check_data_matches_model(ds, trained.spec)
  src = ds.source(split)
  ids = [_text(src[i]["specimen_id"]) for i in range(len(src))]
  predict = jax.jit(train.make_predict_fn(trained.model))
  batches = pipeline.eval_batches(ds, src, batch_size=min(batch_size, len(src)))
  labels, probs = train.predict_batches(predict, batches, trained.variables)
  return labels, probs, ids


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def throughput(trained: train.Trained, batch: int = 128, batches: int = 10) -> float:
  """Images per second of the jitted forward at ``batch`` (compile and warm-up excluded)."""
  predict = jax.jit(train.make_predict_fn(trained.model))
  images = supernet.dummy_images(trained.spec, batch)
  v = trained.variables[0]
  jax.block_until_ready(predict(v, images))
  t0 = time.perf_counter()
  for _ in range(batches):
    out = predict(v, images)
  jax.block_until_ready(out)
  return batch * batches / (time.perf_counter() - t0)


def summarise(labels, probs_runs, *, trials: int = 1000, seed: int = 0) -> dict:
  """Per-run metrics with CIs, mean/std over runs, and the pooled (concatenated) metrics."""
  per_run = []
  for p in probs_runs:
    m = metrics.classification_metrics(labels, p)
    m["ci"] = metrics.bootstrap_ci(labels, p, trials=trials, seed=seed)
    per_run.append(m)
  pooled_labels = np.tile(labels, len(probs_runs))
  pooled_probs = np.concatenate(list(probs_runs))
  pooled = metrics.classification_metrics(pooled_labels, pooled_probs)
  pooled["ci"] = metrics.bootstrap_ci(pooled_labels, pooled_probs, trials=trials, seed=seed)
  mean = {}
  for key in ("acc", *metrics.auc_keys(np.shape(probs_runs)[-1])):
    values = np.array([m[key] for m in per_run])
    mean[key] = float(values.mean())
    mean[f"{key}_std"] = float(values.std(ddof=1)) if len(values) > 1 else 0.0
  return {"runs": per_run, "mean": mean, "pooled": pooled}


def model_facts(trained: train.Trained, *, batch: int = 128, batches: int = 10) -> dict:
  if trained.choice is not None:
    d = describe.describe_derived(trained.spec, trained.choice, compile_=False)
  else:
    d = describe.describe_module(trained.model)
  return {
    "params_m": d["params"] / 1e6,
    "flops_g": (d["flops_per_image"] or 0) / 1e9,
    "throughput_img_s": throughput(trained, batch, batches) if batches else None,
    "throughput_batch": batch,
    "device": _device_name(),
  }


def _device_name() -> str:
  d = jax.devices()[0]
  return d.platform if d.device_kind == d.platform else f"{d.platform} ({d.device_kind})"


def evaluate(
  workdir,
  *,
  split: str = "test",
  data_dir=None,
  trials: int = 1000,
  seed: int = 0,
  throughput_batch: int = 128,
  throughput_batches: int = 10,
  out=None,
) -> dict:
  workdir = pathlib.Path(workdir)
  out = pathlib.Path(out or workdir)
  out.mkdir(parents=True, exist_ok=True)
  trained = train.load(workdir)
  data_dir = data_dir or trained.data_dir()
  classes = list(trained.description().classes)
  labels, probs, ids = predict_split(trained, data_dir, split)
  result = {
    "split": split,
    "classes": classes,
    "runs_evaluated": [p.name for p in trained.run_dirs],
    **summarise(labels, probs, trials=trials, seed=seed),
    "model": model_facts(trained, batch=throughput_batch, batches=throughput_batches),
  }
  (out / "metrics.json").write_text(json.dumps(result, indent=2))
  _write_predictions(out / "predictions.csv", ids, labels, probs, classes)
  # Every run's probabilities, for comparison figures (dlsjax experiment).
  np.savez(out / "probabilities.npz", labels=labels, probs=probs)

  pooled_labels = np.tile(labels, len(probs))
  pooled_probs = np.concatenate(list(probs))
  pooled = result["pooled"]
  band = metrics.roc_band(pooled_labels, pooled_probs, trials=trials, seed=seed)
  runs = f"{len(probs)} run{'s' if len(probs) > 1 else ''} pooled"
  plots.roc_micro(
    band, pooled["auc_micro"], pooled["ci"]["auc_micro"], out / "roc_micro.png",
    title=f"micro-averaged ROC, {split} split ({runs})",
  )  # fmt: skip
  one_hot = np.eye(len(classes))[pooled_labels]
  curves = {c: metrics.roc_curve(one_hot[:, i], pooled_probs[:, i]) for i, c in enumerate(classes)}
  aucs = dict(zip(classes, pooled["auc_per_class"], strict=True))
  plots.roc_per_class(curves, aucs, out / "roc_per_class.png")
  plots.confusion(pooled["confusion"], classes, out / "confusion.png", title=f"{split} ({runs})")
  return result


def _write_predictions(path, ids, labels, probs, classes) -> None:
  mean = probs.mean(0)
  lines = ["specimen_id,label,predicted," + ",".join(f"p_{c}" for c in classes)]
  for sid, y, p in zip(ids, labels, mean, strict=True):
    probs_text = ",".join(f"{x:.5f}" for x in p)
    lines.append(f"{sid},{classes[y]},{classes[int(p.argmax())]},{probs_text}")
  pathlib.Path(path).write_text("\n".join(lines) + "\n")


def format_table(result: dict) -> str:
  """A Markdown table of the paper's Table I columns (plus MedMNIST's binary AUC for 2 classes)."""
  m, pooled, model = result["mean"], result["pooled"], result["model"]
  n = len(result["runs"])
  tput = model["throughput_img_s"]
  keys = ["acc", *(k for k in ("auc_micro", "auc_binary") if k in m)]
  names = {"acc": "ACC", "auc_micro": "AUC (micro)", "auc_binary": "AUC (binary, MedMNIST)"}

  def cell(key):
    lo, hi = pooled["ci"][key]
    return (
      f"{m[key]:.4f}" + (f" ± {m[key + '_std']:.4f}" if n > 1 else "") + f" [{lo:.4f}, {hi:.4f}]"
    )

  return "\n".join(
    [
      "| Params (M) | FLOPs (G) | Throughput (img/s) | "
      + " | ".join(names[k] for k in keys)
      + " |",
      "| --- | --- | --- | " + " | ".join("---" for _ in keys) + " |",
      f"| {model['params_m']:.3g} | {model['flops_g']:.3g} | "
      + (f"{tput:.1f}" if tput else "–")
      + " | "
      + " | ".join(cell(k) for k in keys)
      + " |",
      "",
      f"{result['split']} split, {pooled['n'] // n} specimens, {n} run(s); 95% CIs from "
      f"{pooled['ci']['trials']} bootstrap resamples of the pooled predictions; throughput at "
      f"batch {model['throughput_batch']} on {model['device']}.",
    ]
  )
