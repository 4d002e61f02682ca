"""The paper's experiments (Section IV, Tables I-VI, Fig. 3 c/d), one command per table.

    dlsjax experiment table1 --data-dir DATA --workdir EXP [--runs 5] [--config experiment:demo]

A table is data: a list of :class:`Row`, each a change to the budget's base
config (``dlsjax/configs/experiment.py``) adapted to the dataset. Running a
table runs what each row needs (a search where the row re-searches, the
derivation, training of every run, evaluation) and writes ``EXP/<table>.md``
and ``.csv`` in the paper's columns, plus the ROC comparison figure of
Tables I and II (Fig. 3 c, d).

Resumable per row: searches live in ``EXP/searches/<hash of the search
config>/`` and rows in ``EXP/rows/<hash of the trained config and genotype>/``; a row
with ``row.json`` is finished and never recomputed (another table with the
same row, e.g. DLS-DARTS in Tables I, III, IV, reuses it), and an interrupted
search or training continues from its checkpoints.

Rows a dataset cannot support (fluorescence rows on a single-modality set, a
missing ImageNet checkpoint) are reported as not applicable, with the reason.
"""

from __future__ import annotations

import copy
import csv
import dataclasses
import hashlib
import json
import logging
import pathlib
import time
from collections.abc import Sequence

import numpy as np

log = logging.getLogger(__name__)

PAPER_NAMES = {"NIR1": "NIR-I", "NIR2": "NIR-II"}


class ExperimentError(RuntimeError):
  """An experiment that cannot run as asked (the message says why)."""


@dataclasses.dataclass(frozen=True)
class Row:
  """One line of a table: how its model differs from DLS-DARTS with the budget's settings.

  ``search_set`` changes the search and everything after it; ``train_set``
  only the trained network (the searched genotype is reused, minus the
  ``drop_parts`` the changed network no longer has); ``derive`` picks the
  derivation of a NAS row.
  """

  label: str
  arch: str = "dls_darts"
  search_set: tuple[tuple[str, object], ...] = ()
  train_set: tuple[tuple[str, object], ...] = ()
  derive: str | None = None  # None: the config's (MPDS; argmax for MMNAS)
  drop_parts: tuple[str, ...] = ()
  modalities: tuple[str, ...] | None = None  # None: all of the dataset's
  needs_fluorescence: bool = False  # needs two fluorescence modalities (FL Stem, MMNAS)
  pretrained: bool = False
  extra: tuple[tuple[str, str], ...] = ()  # table-specific columns (|O|, K_train, ...)


@dataclasses.dataclass(frozen=True)
class Table:
  name: str
  title: str
  first_column: str
  rows: tuple[Row, ...]
  extra_columns: tuple[str, ...] = ()
  model_columns: tuple[str, ...] = ()  # params | flops | throughput
  deltas: bool = False  # Δ ACC / Δ AUC against the first row (Table III)
  figure: str | None = None  # the ROC comparison (Fig. 3 c / d)
  cells_column: bool = False  # L: the number of cells of the trained network


def _stems_ablation(label, fusing: bool, fl: bool) -> Row:
  train_set, drop = [], []
  if fusing:
    train_set.append(("model.fusing_stem", "concat"))
    drop.append("fusing")
  if fl:
    train_set.append(("model.fl_stem", "concat"))
    drop.append("fl")
  return Row(label, train_set=tuple(train_set), drop_parts=tuple(drop), needs_fluorescence=fl)


TABLES: dict[str, Table] = {
  t.name: t
  for t in (
    Table(
      "table1",
      "Table I: DLS-DARTS and the comparing methods",
      "Model",
      (
        Row("DLS-DARTS"),
        Row("MMNAS", arch="mmnas", needs_fluorescence=True),
        Row("PyramidNet-SD", arch="pyramidnet_shakedrop"),
        Row("EfficientNet-B0 (pretrained)", arch="efficientnet_b0", pretrained=True),
        Row("EfficientNet-B0 (not pretrained)", arch="efficientnet_b0"),
        Row("ResNet-18", arch="resnet18"),
      ),
      model_columns=("params", "flops", "throughput"),
      figure="Fig. 3c",
    ),
    Table(
      "table2",
      "Table II: DLS-DARTS on single-modal and multi-modal images",
      "Image Mode",
      (Row("Multi-modal"),),  # + one row per modality of the dataset (rows_for)
      model_columns=("params", "flops"),
      figure="Fig. 3d",
    ),
    Table(
      "table3",
      "Table III: ablations of the derivation strategy and the learnable stems",
      "Ablation Part",
      (
        Row("DLS-DARTS"),
        Row("- MPDS", derive="argmax"),
        _stems_ablation("- Fusing Stem", fusing=True, fl=False),
        _stems_ablation("- FL Stem", fusing=False, fl=True),
        _stems_ablation("- Learnable Stems", fusing=True, fl=True),
      ),
      deltas=True,
    ),
    Table(
      "table4",
      "Table IV: candidate operation sets",
      "O",
      (
        Row("DARTS", search_set=(("model.op_set", "darts8"),), extra=(("|O|", "8"),)),
        Row(
          "DARTS - {5x5 dil_conv} + {1x1, 3x3 nor_conv}",
          search_set=(("model.op_set", "paper9"),),
          extra=(("|O|", "9"),),
        ),
        Row(
          "DARTS + {3x3, 5x5 nor_conv}",
          search_set=(("model.op_set", "paper10"),),
          extra=(("|O|", "10"),),
        ),
      ),
      extra_columns=("|O|",),
    ),
    Table(
      "table5",
      "Table V: normal cells per group in training (K_train)",
      "K_train",
      tuple(Row(str(k), train_set=(("model.k_train", k),)) for k in (1, 2, 3)),
      cells_column=True,
    ),
    Table(
      "table6",
      "Table VI: total reduction cells (K_r)",
      "K_r",
      tuple(Row(str(k), search_set=(("model.k_r", k),)) for k in (2, 3, 4)),
      cells_column=True,
    ),
  )
}


# ----------------------------------------------------------------------------- configs


def base_config(config, ds, *, pretrained: str | None = None):
  """The budget's config (a spec such as ``experiment:demo``, or a ConfigDict) with the
  dataset's modalities and classes (``data/fit.py``)."""
  from dlsjax.configs import get_config
  from dlsjax.data.fit import fit_config

  cfg = get_config(config) if isinstance(config, str) else copy.deepcopy(config)
  if "experiment" not in cfg:
    raise ExperimentError(
      "the config has no experiment section: use experiment:paper, experiment:demo or "
      "experiment:tiny"
    )
  cfg.model.modalities, cfg.model.num_classes, cfg.classes = None, None, None
  cfg = fit_config(cfg, ds)  # checks the resolution before any search or training starts
  if pretrained:
    cfg.model.baselines.efficientnet_b0.pretrained = str(pathlib.Path(pretrained).resolve())
  return cfg


def set_path(cfg, key: str, value) -> None:
  from dlsjax.configs import field_parent

  try:
    node, leaf = field_parent(cfg, key)
  except KeyError:
    raise KeyError(f"config has no field {key}") from None
  node[leaf] = value


def not_applicable(row: Row, base) -> str | None:
  """Why ``row`` cannot run on the dataset of ``base``; None when it can."""
  names = [m["name"] for m in base.model.modalities]
  if row.modalities is not None:
    missing = [m for m in row.modalities if m not in names]
    if missing:
      return f"the dataset has no {', '.join(missing)} images"
  fl = [m["name"] for m in base.model.modalities if m["fluorescence"]]
  if row.needs_fluorescence and len(fl) < 2:
    return f"needs two fluorescence modalities (NIR-I, NIR-II); the dataset has {names}"
  if row.pretrained and not base.model.baselines.efficientnet_b0.pretrained:
    return "no ImageNet checkpoint available here (pass --pretrained PATH to an orbax checkpoint)"
  return None


def row_configs(row: Row, base):
  """``(search config or None, training config)`` of a row that can run."""
  from dlsjax import models

  cfg = copy.deepcopy(base)
  if row.modalities is not None:
    cfg.model.modalities = [m for m in cfg.model.modalities if m["name"] in row.modalities]
  models.apply_preset(cfg, row.arch)
  if not row.pretrained and row.arch == "efficientnet_b0":
    cfg.model.baselines.efficientnet_b0.pretrained = ""
  if row.derive:
    cfg.derive.method = row.derive
  for k, v in row.search_set:
    set_path(cfg, k, v)
  search_cfg = cfg if models.needs_genotype(row.arch) else None
  train_cfg = copy.deepcopy(cfg)
  for k, v in row.train_set:
    set_path(train_cfg, k, v)
  return search_cfg, train_cfg


# Fields that only the trained network uses: a change to them never re-searches.
TRAIN_ONLY_MODEL = ("arch", "c_sin_train", "k_train", "layers_train", "darts_c_train", "baselines")


def search_key(cfg) -> str:
  model = {k: v for k, v in cfg.model.to_dict().items() if k not in TRAIN_ONLY_MODEL}
  fields = {"model": model, "search": cfg.search.to_dict(), "data": cfg.data.to_dict(),
            "seed": cfg.seed}  # fmt: skip
  return _hash(fields)


def _hash(obj) -> str:
  return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:10]


def rows_for(table: Table, base) -> tuple[Row, ...]:
  """The table's rows; Table II gets one single-modality row per modality of the dataset."""
  if table.name != "table2":
    return table.rows
  single = tuple(
    Row(PAPER_NAMES.get(m["name"], m["name"]), modalities=(m["name"],))
    for m in base.model.modalities
  )
  return table.rows + (single if len(single) > 1 else ())


# ----------------------------------------------------------------------------- running


def run_table(
  name: str,
  data_dir,
  workdir,
  *,
  config="experiment:paper",
  config_name: str | None = None,
  runs: int | None = None,
  pretrained: str | None = None,
  only: Sequence[str] | None = None,
  progress: bool = True,
) -> dict:
  """Run every row of table ``name`` that is not finished; write its md, csv and figure.

  ``config``: the budget, a spec (``experiment:paper | experiment:demo | experiment:tiny``)
  or its ConfigDict (``config_name`` then names it in the table). ``only``: run just the rows
  with these labels (the others are listed as not run); a later call without it keeps every
  finished row and runs the rest.
  """
  from dlsjax.data import dataset

  if name not in TABLES:
    raise ExperimentError(f"unknown table {name!r}; available: {sorted(TABLES)}")
  table = TABLES[name]
  ds = dataset.load(data_dir)
  base = base_config(config, ds, pretrained=pretrained)
  budget = config_name or (config if isinstance(config, str) else "custom")
  runs = int(runs or base.experiment.runs)
  if runs < 1:
    raise ExperimentError(f"--runs must be >= 1, got {runs}")
  w = pathlib.Path(workdir)
  w.mkdir(parents=True, exist_ok=True)
  rows = rows_for(table, base)
  unknown = sorted(set(only or ()) - {r.label for r in rows})
  if unknown:
    raise ExperimentError(f"{name} has no row {unknown}; its rows: {[r.label for r in rows]}")
  results = []
  for i, row in enumerate(rows):
    if only and row.label not in only:
      results.append({"label": row.label, "status": "not run", "reason": "not selected"})
      continue
    log.info("%s row %d/%d: %s", name, i + 1, len(rows), row.label)
    reason = not_applicable(row, base)
    if reason:
      results.append({"label": row.label, "status": "n/a", "reason": reason})
      continue
    results.append(run_row(row, base, ds, w, runs=runs, progress=progress))
  out = write_table(table, results, base, w, budget=budget, runs=runs, data_dir=ds.data_dir)
  return {"table": name, "rows": results, "files": out}


def run_row(row: Row, base, ds, w: pathlib.Path, *, runs: int, progress: bool) -> dict:
  from dlsjax import evaluate, genotype, models, train

  search_cfg, train_cfg = row_configs(row, base)
  geno_path = None
  source = None
  s_dir = None
  if search_cfg is not None:
    s_dir = ensure_search(search_cfg, ds, w, progress=progress)
    geno_path = ensure_genotype(search_cfg, s_dir, ds, progress=progress)
    source = str(geno_path.relative_to(w))
  # Named by what is trained, not by the label: identical rows of any table share one folder.
  row_dir = w / "rows" / _hash([train_cfg.to_dict(), source])
  done = row_dir / "row.json"
  if done.is_file():
    record = json.loads(done.read_text())
    if record.get("runs") == runs:
      log.info("row %s: finished, kept (%s)", row.label, row_dir)
      return {**record, "label": row.label}
  row_dir.mkdir(parents=True, exist_ok=True)
  if geno_path is not None and row.drop_parts:
    g = genotype.Genotype.load(geno_path)
    parts = {p: v for p, v in g.parts.items() if p not in row.drop_parts}
    geno_path = row_dir / "genotype.json"
    dataclasses.replace(g, parts=parts).save(geno_path)
  t0 = time.perf_counter()
  t_dir = row_dir / "train"
  train.train(train_cfg, geno_path, ds.data_dir, t_dir, runs=runs, resume=True, progress=progress)
  ev = train_cfg.evaluate
  result = evaluate.evaluate(
    t_dir, data_dir=ds.data_dir, trials=ev.bootstrap, throughput_batch=ev.throughput_batch,
    throughput_batches=ev.throughput_batches,
  )  # fmt: skip
  spec = train.train_spec(train_cfg)
  record = {
    "label": row.label,
    "status": "done",
    "arch": models.arch(train_cfg),
    "runs": runs,
    "dir": str(row_dir.relative_to(w)),
    "genotype": source,
    "cells": len(spec.cells) if models.needs_genotype(row.arch) else None,
    "mean": result["mean"],
    "pooled_ci": {k: v for k, v in result["pooled"]["ci"].items() if k in result["mean"]},
    "model": result["model"],
    "seconds": round(time.perf_counter() - t0, 1),  # training + evaluation of this row
    "search_seconds": search_seconds(s_dir) if s_dir is not None else {},
  }
  done.write_text(json.dumps(record, indent=2))
  return record


def ensure_search(cfg, ds, w: pathlib.Path, *, progress: bool) -> pathlib.Path:
  """The finished search of ``cfg`` (run or resumed here; shared by every row that needs it)."""
  from dlsjax import search

  s_dir = w / "searches" / search_key(cfg)
  if not (s_dir / "alphas.npz").is_file():
    log.info("search %s ...", s_dir)
    t0 = time.perf_counter()
    search.search(cfg, ds.data_dir, s_dir, resume=True, progress=progress)
    _add_seconds(s_dir, "search", t0)
  return s_dir


def _add_seconds(s_dir: pathlib.Path, stage: str, t0: float) -> None:
  """Wall seconds of a search-side stage (this call; a resumed stage counts its last call)."""
  path = s_dir / "experiment_seconds.json"
  seconds = json.loads(path.read_text()) if path.is_file() else {}
  seconds[stage] = round(time.perf_counter() - t0, 1)
  path.write_text(json.dumps(seconds, indent=2))


def search_seconds(s_dir: pathlib.Path) -> dict:
  path = s_dir / "experiment_seconds.json"
  return json.loads(path.read_text()) if path.is_file() else {}


def ensure_genotype(cfg, s_dir: pathlib.Path, ds, *, progress: bool) -> pathlib.Path:
  """The genotype of ``cfg.derive.method``: argmax is written by the search; MPDS/PT derive."""
  from dlsjax import derive

  method = cfg.derive.method
  if method == "argmax":
    return s_dir / "genotype_argmax.json"
  out = s_dir / f"genotype_{method}.json"
  if not out.is_file():
    t0 = time.perf_counter()
    derive.derive(s_dir, data_dir=ds.data_dir, method=method, progress=progress)
    _add_seconds(s_dir, f"derive_{method}", t0)
    (s_dir / "genotype.json").replace(out)
    log_path = s_dir / "derivation_log.json"
    if log_path.is_file():
      log_path.replace(s_dir / f"derivation_log_{method}.json")
  return out


# ----------------------------------------------------------------------------- output


def _num(x: float) -> str:
  """Two decimals as the paper; three significant digits for the small models of a budget."""
  return f"{x:.2f}" if x >= 1 else f"{x:.3g}"


def _cell(mean: float, std: float, ci, runs: int) -> str:
  s = f"{mean:.3f}" + (f" ± {std:.3f}" if runs > 1 else "")
  return f"{s} ({ci[0]:.3f}, {ci[1]:.3f})"


def write_table(table: Table, results, base, w, *, budget, runs, data_dir) -> list[str]:
  device = next((r["model"]["device"] for r in results if r["status"] == "done"), "")
  batch = base.evaluate.throughput_batch
  heads = [table.first_column, *table.extra_columns]
  if table.cells_column:
    heads.append("L")
  names = {
    "params": "# Params (M)",
    "flops": "# FLOPs (G)",
    "throughput": f"Throughput (im/s, batch {batch}, {device})",
  }
  heads += [names[c] for c in table.model_columns]
  heads += ["ACC", "Δ ACC", "AUC", "Δ AUC"] if table.deltas else ["ACC", "AUC"]
  # Two classes: MedMNIST's binary AUC beside the paper's micro-average.
  binary = any(r["status"] == "done" and "auc_binary" in r["mean"] for r in results)
  if binary:
    heads += ["AUC (binary)"]
  ref = results[0] if results and results[0]["status"] == "done" else None
  md = [f"# {table.title}", "", "| " + " | ".join(heads) + " |", "|" + " --- |" * len(heads)]
  csv_rows = []
  for row, r in zip(rows_for(table, base), results, strict=True):
    cells = [r["label"], *[dict(row.extra).get(c, "") for c in table.extra_columns]]
    rec = {"table": table.name, "row": r["label"], "status": r["status"]}
    rec.update(dict(row.extra))
    if r["status"] != "done":
      n = len(heads) - len(cells)
      md.append("| " + " | ".join(cells + [r["status"]] * n) + " |")
      rec["reason"] = r["reason"]
      csv_rows.append(rec)
      continue
    m, ci, model = r["mean"], r["pooled_ci"], r["model"]
    if table.cells_column:
      cells.append(str(r["cells"]))
    values = {
      "params": _num(model["params_m"]),
      "flops": _num(model["flops_g"]),
      "throughput": f"{model['throughput_img_s']:.0f}" if model["throughput_img_s"] else "–",
    }
    cells += [values[c] for c in table.model_columns]
    acc = _cell(m["acc"], m["acc_std"], ci["acc"], r["runs"])
    auc = _cell(m["auc_micro"], m["auc_micro_std"], ci["auc_micro"], r["runs"])
    if table.deltas:
      d_acc = f"{m['acc'] - ref['mean']['acc']:+.3f}" if ref else "–"
      d_auc = f"{m['auc_micro'] - ref['mean']['auc_micro']:+.3f}" if ref else "–"
      cells += [acc, d_acc, auc, d_auc]
    else:
      cells += [acc, auc]
    if binary:
      cells.append(
        _cell(m["auc_binary"], m["auc_binary_std"], ci["auc_binary"], r["runs"])
        if "auc_binary" in m
        else "–"
      )
    md.append("| " + " | ".join(cells) + " |")
    rec.update(
      arch=r["arch"], runs=r["runs"], cells=r["cells"], params_m=model["params_m"],
      flops_g=model["flops_g"], throughput_img_s=model["throughput_img_s"],
      throughput_batch=model["throughput_batch"], device=model["device"],
      acc=m["acc"], acc_std=m["acc_std"], acc_lo=ci["acc"][0], acc_hi=ci["acc"][1],
      auc=m["auc_micro"], auc_std=m["auc_micro_std"], auc_lo=ci["auc_micro"][0],
      auc_hi=ci["auc_micro"][1], dir=r["dir"], genotype=r["genotype"], seconds=r["seconds"],
      search_and_derive_seconds=sum(r.get("search_seconds", {}).values()),
    )  # fmt: skip
    if "auc_binary" in m:
      rec.update(
        auc_binary=m["auc_binary"], auc_binary_std=m["auc_binary_std"],
        auc_binary_lo=ci["auc_binary"][0], auc_binary_hi=ci["auc_binary"][1],
      )  # fmt: skip
    csv_rows.append(rec)
  trials = base.evaluate.bootstrap
  md += [
    "",
    f"Dataset `{data_dir}`, test split; budget `{budget}`; means over {runs} run(s)"
    + (" ± std" if runs > 1 else "")
    + f"; 95% CIs in brackets from {trials} bootstrap resamples of the runs' pooled predictions.",
  ]
  for status, head in (("n/a", "Not applicable:"), ("not run", "Not run (`--rows`):")):
    listed = [(r["label"], r["reason"]) for r in results if r["status"] == status]
    if listed:
      md += ["", head, *[f"- {label}: {why}" for label, why in listed]]
  reduced = budget_reductions(base)
  if reduced:
    md += ["", f"Reduced relative to the paper by the `{budget}` budget:", ""]
    md += ["| setting | paper | here |", "| --- | --- | --- |"]
    md += [f"| `{k}` | {a} | {b} |" for k, a, b in reduced]
  files = []
  figure = None
  if table.figure:
    figure = w / f"{table.name}_roc.png"
    if plot_comparison(results, w, figure, title=f"{table.figure}: micro-averaged ROC ({budget})"):
      md += ["", f"![{table.figure}]({figure.name})"]
      files.append(str(figure))
  md_path, csv_path = w / f"{table.name}.md", w / f"{table.name}.csv"
  md_path.write_text("\n".join(md) + "\n")
  keys = list(dict.fromkeys(k for rec in csv_rows for k in rec))
  with csv_path.open("w", newline="") as f:
    wr = csv.DictWriter(f, fieldnames=keys)
    wr.writeheader()
    wr.writerows(csv_rows)
  return [str(md_path), str(csv_path), *files]


def budget_reductions(base) -> list[tuple[str, str, str]]:
  """(setting, paper, this budget) for what the budget changed (not the dataset's fields)."""
  from dlsjax.configs import get_config

  paper = get_config("experiment", "paper")
  skip = {"model.modalities", "model.num_classes"}
  rows = []
  for section in ("model", "search", "derive", "train", "evaluate", "experiment"):
    ref = _flat(paper[section].to_dict(), section)
    mine = _flat(base[section].to_dict(), section)
    for k, v in mine.items():
      if k in ref and ref[k] != v and k not in skip and not k.endswith(".pretrained"):
        rows.append((k, str(ref[k]), str(v)))
  return rows


def _flat(d: dict, prefix: str) -> dict:
  out = {}
  for k, v in d.items():
    key = f"{prefix}.{k}"
    if isinstance(v, dict):
      out.update(_flat(v, key))
    else:
      out[key] = list(v) if isinstance(v, tuple) else v
  return out


def plot_comparison(results, w: pathlib.Path, path: pathlib.Path, *, title: str) -> bool:
  """Micro-averaged ROC of every finished row on the concatenated runs (paper Fig. 3 c/d)."""
  from dlsjax import metrics, plots

  curves = {}
  for r in results:
    if r["status"] != "done":
      continue
    data = np.load(w / r["dir"] / "train" / "probabilities.npz")
    labels, probs = data["labels"], data["probs"]
    fpr, tpr = metrics.roc_curve_micro(np.tile(labels, len(probs)), np.concatenate(list(probs)))
    m = r["mean"]
    text = f"{r['label']} (AUC {m['auc_micro']:.3f}"
    text += f" ± {m['auc_micro_std']:.3f})" if r["runs"] > 1 else ")"
    curves[text] = (fpr, tpr)
  if not curves:
    return False
  plots.roc_comparison(curves, path, title=title)
  return True
