"""The end-to-end job behind ``make demo``: synthesise, build, search, derive, train, evaluate.

``run(workdir, config)`` runs every stage of the paper's pipeline on the
synthetic default dataset and writes ``workdir/report.md``, which links the
figures and states what the config reduced relative to the paper. Stages whose
output exists are not redone (a stopped demo continues where it was).
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

log = logging.getLogger(__name__)


def run(workdir, config, *, data_folder=None, progress: bool = True) -> pathlib.Path:
  """``data_folder``: a dataset folder to use instead of the synthetic one."""
  from dlsjax import derive, evaluate, search, train
  from dlsjax.data import builder, dataset, synth

  w = pathlib.Path(workdir)
  w.mkdir(parents=True, exist_ok=True)
  raw = pathlib.Path(data_folder) if data_folder else w / "data"
  built = w / "data_built"
  s_dir, t_dir = w / "search", w / "train"
  seconds = _load_times(w)

  def stage(name, fn, done: bool):
    if done:
      log.info("demo: %s already done, kept", name)
      return
    log.info("demo: %s ...", name)
    t0 = time.perf_counter()
    fn()
    seconds[name] = round(time.perf_counter() - t0, 1)
    (w / "stage_seconds.json").write_text(json.dumps(seconds, indent=2))

  if data_folder is None:
    if "synth" not in config:
      raise ValueError("this config has no synthetic dataset (config.synth): pass --data-folder")
    sy = config.synth
    stage(
      "synthesise",
      lambda: synth.synthesize(
        raw, specimens=sy.specimens, patients=sy.patients, size=sy.size, seed=sy.seed
      ),
      (raw / "manifest.csv").is_file(),
    )
  opts = builder.BuildOptions.from_config(config.data, config.model.resolution)
  stage("build", lambda: builder.build(raw, built, opts), (built / builder.METADATA).is_file())
  stage(
    "search",
    lambda: search.search(config, built, s_dir, resume=True, progress=progress),
    (s_dir / "alphas.npz").is_file(),
  )
  stage(
    "derive (MPDS)",
    lambda: derive.derive(s_dir, data_dir=built, progress=progress),
    (s_dir / "derivation_log.json").is_file(),
  )
  runs = int(config.get("runs", 1))  # training seeds (config.seed + i)
  stage(
    "train",
    lambda: train.train(config, s_dir / "genotype.json", built, t_dir, runs=runs, resume=True,
                        progress=progress),
    all(_trained(t_dir / f"run{i}", int(config.train.epochs)) for i in range(runs)),
  )  # fmt: skip
  ev = config.evaluate
  result = {}

  def do_evaluate():
    result.update(
      evaluate.evaluate(
        t_dir,
        data_dir=built,
        trials=ev.bootstrap,
        throughput_batch=ev.throughput_batch,
        throughput_batches=ev.throughput_batches,
      )  # fmt: skip
    )

  stage("evaluate", do_evaluate, False)
  ds = dataset.load(built)
  cams = []

  def do_gradcam():
    cams.extend(gradcam_examples(t_dir, ds, config))

  stage("Grad-CAM", do_gradcam, False)
  latency = {}

  def do_predict():
    latency.update(predict_latency(t_dir, raw, ds))

  stage("predict", do_predict, False)
  name = f"dataset `{ds.desc.name}`" if data_folder else "synthetic default dataset"
  report = write_report(w, config, result, cams, latency, seconds, name)
  log.info("demo: wrote %s", report)
  return report


def _load_times(w: pathlib.Path) -> dict:
  p = w / "stage_seconds.json"
  return json.loads(p.read_text()) if p.is_file() else {}


def _trained(run_dir: pathlib.Path, epochs: int) -> bool:
  from dlsjax import checkpoint

  c = run_dir / "checkpoints"
  if not c.is_dir():
    return False
  ck = checkpoint.Checkpoints(c)
  try:
    return ck.latest_step() is not None and ck.meta()["epoch"] >= epochs
  finally:
    ck.close()


def gradcam_examples(t_dir: pathlib.Path, ds, config) -> list[pathlib.Path]:
  """One Grad-CAM panel per class: the first test specimen of each class."""
  from dlsjax import gradcam, plots, train

  trained = train.load(t_dir)
  src = ds.source("test")
  first = {}
  for i in range(len(src)):
    first.setdefault(int(src[i]["label"]), i)
  out = []
  classes = list(ds.desc.classes)
  explain = gradcam.make_gradcam(trained.model)
  for label, i in sorted(first.items()):
    ex = ds.decode(src[i])
    images = {k: v[None] for k, v in ex["images"].items()}
    heat, probs, cls = explain(trained.variables[0], images)
    path = t_dir / f"gradcam_{ex['specimen_id']}.png"
    plots.gradcam_panel(
      ex["images"], heat, ds.modalities[0], path,
      title=f"{ex['specimen_id']}: true {classes[label]}, predicted {classes[cls]} "
      f"(p={probs[cls]:.2f})",
    )  # fmt: skip
    out.append(path)
  return out


def predict_latency(t_dir: pathlib.Path, raw: pathlib.Path, ds, n: int = 5) -> dict:
  """Seconds per raw specimen folder (read + preprocess + forward) after loading the model."""
  from dlsjax import predict

  p = predict.Predictor(t_dir)
  src = ds.source("test")
  ids = [
    x.decode() if isinstance(x, bytes) else str(x)
    for x in (src[i]["specimen_id"] for i in range(min(n, len(src))))
  ]
  results = [p(raw / sid) for sid in ids]
  secs = [r["seconds"] for r in results]
  return {"specimens": len(secs), "mean_s": sum(secs) / len(secs), "max_s": max(secs)}


def reductions(config) -> list[tuple[str, str, str]]:
  """(setting, paper, this config) for every value the config changed from the paper presets.

  The fields taken from the dataset (``data/fit.py``) are not reductions and are left out.
  """
  from dlsjax.configs import get_config
  from dlsjax.data.fit import FROM_DATA

  rows = []
  for section, preset in (("model", "paper"), ("search", "paper"), ("derive", "paper"),
                          ("train", "paper_train")):  # fmt: skip
    ref = get_config(preset)[section].to_dict()
    for k, v in config[section].to_dict().items():
      if k in ref and ref[k] != v and f"{section}.{k}" not in FROM_DATA:
        rows.append((f"{section}.{k}", str(ref[k]), str(v)))
  return rows


def _runs_text(result: dict) -> str:
  n = len(result["runs_evaluated"])
  return f"{n} seed{'s' if n != 1 else ''}"


def _selection_lines(config) -> list[str]:
  select = config.train.get("select", "last")
  if select == "last":
    return ["Each seed's model is its last epoch's weights (as the paper).", ""]
  return [
    f"Each seed's model is the epoch with the best `{select}` on the **val** split "
    "(`train.select`; the per-epoch val metrics are in `train/run*/metrics.jsonl`).",
    "",
  ]


def _search_lines(s_dir: pathlib.Path, config) -> list[str]:
  """How far the alphas moved from uniform, and the search budget against the paper's."""
  import numpy as np

  from dlsjax import genotype
  from dlsjax.configs import get_config

  weights = genotype.softmax_weights(dict(np.load(s_dir / "alphas.npz")))
  ratio = {p: float(w.max(-1).max() * w.shape[-1]) for p, w in weights.items()}
  moved = {p: int((w.max(-1) * w.shape[-1] >= 2).sum()) for p, w in weights.items()}
  paper = get_config("paper").search
  lines = [
    "| part | edges | edges whose top op is >= 2x uniform | largest weight / uniform |",
    "| --- | --- | --- | --- |",
    *[f"| {p} | {w.shape[0]} | {moved[p]} | {ratio[p]:.2f} |" for p, w in weights.items()],
    "",
    f"Search budget: {config.search.epochs} epochs at alpha lr {config.search.alpha_lr:g} after "
    f"{config.search.get('alpha_warmup_epochs', 0)} weight-only epochs (paper: "
    f"{paper.epochs} epochs at {paper.alpha_lr:g}, no warm-up).",
  ]
  return lines


def write_report(w, config, result, cams, latency, seconds, data_name) -> pathlib.Path:
  from dlsjax import evaluate

  s_dir, t_dir = w / "search", w / "train"
  geno_text = (s_dir / "genotype.json").read_text() if (s_dir / "genotype.json").is_file() else ""
  log_d = json.loads((s_dir / "derivation_log.json").read_text())
  lines = [
    "# dlsjax demo report",
    "",
    f"The DLS-DARTS pipeline (Xiao et al., IEEE TMI 2022) on the {data_name}: "
    "first-order bi-level search, MPDS derivation, training of the derived network "
    f"({_runs_text(result)}), evaluation on the test split (read once, here), Grad-CAM and "
    "prediction from raw images.",
    "",
    *_selection_lines(config),
    "## Test metrics (paper Table I columns)",
    "",
    evaluate.format_table(result),
    "",
    "Per-class one-vs-rest AUC: "
    + ", ".join(
      f"{c} {a:.3f}"
      for c, a in zip(result["classes"], result["pooled"]["auc_per_class"], strict=True)
    )  # fmt: skip
    + ".",
    "",
    "![micro ROC](train/roc_micro.png) ![per-class ROC](train/roc_per_class.png) "
    "![confusion](train/confusion.png)",
    "",
    "## Search",
    "",
    "Softmaxed alphas of every learnable part at the end of the search:",
    "",
    "![alphas](search/alphas.png)",
    "",
    *_search_lines(s_dir, config),
    "",
    f"## Derived architecture ({log_d['method'].upper()}, metric {log_d['metric']}, "
    f"{log_d['candidate_evaluations']} candidate evaluations on "
    f"{log_d['validation_images']} images, {log_d['compilations']} compilations)",
    "",
    "![genotype](search/genotype.png)",
    "",
    "```json",
    geno_text.strip(),
    "```",
    "",
    "Every decision with its candidates' metrics: `search/derivation_log.json`.",
    "",
    "## Grad-CAM (paper Fig. 4)",
    "",
    *[f"![{p.stem}](train/{p.name})" for p in cams],
    "",
    "## Prediction from raw specimen folders",
    "",
    f"`dlsjax predict --workdir {t_dir} SPECIMEN_DIR...` on {latency.get('specimens', 0)} raw "
    f"test specimens: {latency.get('mean_s', float('nan')):.3f} s per specimen on average, "
    f"{latency.get('max_s', float('nan')):.3f} s at most (read, preprocess, forward; model "
    "loaded and compiled once).",
    "",
    "## Time per stage (seconds, this machine)",
    "",
    "| stage | seconds |",
    "| --- | --- |",
    *[f"| {k} | {v} |" for k, v in seconds.items()],
    "",
    "## What this demo reduces relative to the paper",
    "",
    "The macro structure, operation set and derivation are the paper's; the settings below "
    "differ so that the whole pipeline runs in minutes on a 2-core CPU (each is explained "
    "in the config's file, `dlsjax/configs/`)"
    + (
      ", and the synthetic dataset stands in for the clinical one (which is not public): the "
      "numbers above say that the pipeline works, not how DLS-DARTS performs."
      if "synthetic" in data_name
      else "."
    ),
    "",
    "| setting | paper | demo |",
    "| --- | --- | --- |",
    *[f"| `{k}` | {a} | {b} |" for k, a, b in reductions(config)],
    "",
  ]
  path = w / "report.md"
  path.write_text("\n".join(lines))
  return path
