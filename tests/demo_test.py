"""The end-to-end pipeline (``make demo`` with the tiny config), training resume, several runs,
evaluate, Grad-CAM and predict from raw specimen folders."""

import json
import logging
import re

import ml_collections
import numpy as np
import pytest
from conftest import cli

from dlsjax import evaluate, train
from dlsjax.configs import get_config


@pytest.mark.heavy
def test_tiny_demo_pipeline_then_resume_runs_gradcam_predict(
  tmp_path_factory, tmp_path, capsys, caplog
):
  w = tmp_path_factory.mktemp("demo")
  cli("demo", "--config", "demo:tiny", "--workdir", str(w))
  check_report(w)
  check_train_resume_and_runs(w, tmp_path, caplog)
  check_gradcam_and_predict(w, tmp_path, capsys)
  check_experiment_table3_and_a_baseline(w, tmp_path, capsys)


def check_report(w):
  report = (w / "report.md").read_text()
  for fig in ("train/roc_micro.png", "train/roc_per_class.png", "train/confusion.png",
              "search/alphas.png", "search/genotype.png", "gradcam_"):  # fmt: skip
    assert fig in report, fig
  for name in ("roc_micro.png", "roc_per_class.png", "confusion.png"):
    assert (w / "train" / name).stat().st_size > 5_000
  # What was reduced relative to the paper is stated, with the paper's values.
  assert "| `model.c_sin_search` | 48 | 4 |" in report
  assert "| `train.epochs` | 110 | 2 |" in report
  # How far the alphas moved, and the search budget against the paper's.
  assert "| normal | 9 |" in report and "largest weight / uniform" in report
  assert "Search budget: 1 epochs at alpha lr 0.08 after 0 weight-only epochs (paper: 50" in report
  m = json.loads((w / "train" / "metrics.json").read_text())
  assert m["split"] == "test" and m["runs_evaluated"] == ["run0"]
  pooled = m["pooled"]
  assert 0 <= pooled["acc"] <= 1 and 0 <= pooled["auc_micro"] <= 1
  lo, hi = pooled["ci"]["auc_micro"]
  assert lo <= pooled["auc_micro"] <= hi and pooled["ci"]["trials"] == 50
  assert np.sum(pooled["confusion"]) == pooled["n"]
  assert m["model"]["params_m"] > 0 and m["model"]["flops_g"] > 0
  assert m["model"]["throughput_img_s"] > 0
  records = [json.loads(x) for x in (w / "train/run0/metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  # DropPath ramps linearly: 0 in the first epoch, max/2 in the second of two.
  assert records[0]["drop_prob"] == 0 and records[1]["drop_prob"] == pytest.approx(0.1)
  # MPDS through the CLI: every edge of every part in order, then nodes; the fixed stages
  # (stems, broadcast of their output, cells: no learnable stem here) compile once each.
  from dlsjax import genotype
  from dlsjax.netspec import spec_from_config

  fitted = ml_collections.ConfigDict(json.loads((w / "search" / "config.json").read_text()))
  assert [m["name"] for m in fitted.model.modalities] == ["WL", "NIR1", "NIR2"]  # from the data
  spec = spec_from_config(fitted.model, phase="search")
  logd = json.loads((w / "search" / "derivation_log.json").read_text())
  assert (logd["method"], logd["metric"]) == ("mpds", "accuracy")
  assert logd["compilations"] == 3 and logd["validation_images"] == 8
  edges = [(d["part"], d["edge"]) for d in logd["decisions"] if d["kind"] == "edge"]
  assert edges == [(p, e) for p, t in spec.topologies().items() for e in range(t.num_edges)]
  assert all(d["choice"] != "none" for d in logd["decisions"] if d["kind"] == "edge")
  geno = genotype.Genotype.load(w / "search" / "genotype.json")
  assert set(geno.parts) == {"normal", "reduce"}  # the tiny config's stems are not searched
  assert (w / "search" / "genotype.png").stat().st_size > 10_000
  # Finished stages are recorded (a second `make demo` keeps them).
  seconds = json.loads((w / "stage_seconds.json").read_text())
  assert set(seconds) >= {"search", "derive (MPDS)", "train", "evaluate"}


def check_train_resume_and_runs(w, tmp_path, caplog):
  """Stopped mid-epoch and resumed (under shard_map) == the demo's uninterrupted pmap run
  (4 CPU devices, conftest); two runs -> mean +- std."""
  config = get_config("demo", "tiny")
  geno, data = w / "search" / "genotype.json", w / "data_built"
  t = tmp_path / "train"
  train.train(config, geno, data, t, runs=2, stop_after=1, progress=False)
  assert not (t / "run1").exists()
  with pytest.raises(train.TrainError, match="pass --resume"):
    train.train(config, geno, data, t, runs=2, progress=False)
  # The rest of run 0 and run 1 under shard_map: must equal the demo's pmap run.
  config.train.parallel = "shard_map"
  with caplog.at_level(logging.INFO, logger="dlsjax.train"):
    train.train(config, geno, data, t, runs=2, resume=True, progress=False)
  # Run 0 resumed after its first step (not from step 0) and ran the rest; run 1 started fresh.
  assert re.search(r"run0: resuming at epoch 1, batch 1 \(step 1\)", caplog.text)
  ran = [
    int(n) for n in re.findall(r"ran (\d+) steps in this call \(from step (?:0|1)\)", caplog.text)
  ]
  assert len(ran) == 2 and ran[0] == ran[1] - 1, caplog.text
  demo_run = train.load(w / "train")
  resumed = train.load(t)
  assert len(resumed.variables) == 2
  for a, b in zip(jax_leaves(demo_run.variables[0]), jax_leaves(resumed.variables[0]), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
  assert any(  # the second run has its own seed
    not np.allclose(a, b)
    for a, b in zip(jax_leaves(resumed.variables[0]), jax_leaves(resumed.variables[1]), strict=True)
  )
  result = evaluate.evaluate(t, trials=20, throughput_batches=0)
  assert result["runs_evaluated"] == ["run0", "run1"]
  accs = [r["acc"] for r in result["runs"]]
  assert result["mean"]["acc"] == pytest.approx(np.mean(accs))
  assert result["mean"]["acc_std"] == pytest.approx(np.std(accs, ddof=1))
  assert result["pooled"]["n"] == 2 * result["runs"][0]["n"]
  assert "±" in evaluate.format_table(result)


def jax_leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def main_in_process(capsys, *args):
  """The CLI in this process (the compiled functions are cached on disk by the demo's run)."""
  from dlsjax import main

  capsys.readouterr()
  try:
    code = main.main(list(args))
  except SystemExit as e:
    return e.code, capsys.readouterr()
  return code, capsys.readouterr()


def check_gradcam_and_predict(w, tmp_path, capsys):
  t = w / "train"
  ds_meta = json.loads((t / "dataset.json").read_text())
  classes = ds_meta["description"]["classes"]
  test_ids = [line.split(",")[0] for line in (t / "predictions.csv").read_text().splitlines()[1:]]
  sid = test_ids[0]
  code, _ = main_in_process(
    capsys, "gradcam", "--workdir", str(t), "--specimen", sid, "--class", classes[1],
    "--out", str(tmp_path),
  )  # fmt: skip
  assert code == 0 and (tmp_path / f"gradcam_{sid}.png").stat().st_size > 5_000
  code, _ = main_in_process(capsys, "gradcam", "--workdir", str(t), "--specimen", "nope")
  assert "no specimen 'nope'" in str(code)

  raw = w / "data"
  code, out = main_in_process(capsys, "predict", "--workdir", str(t), str(raw / sid),
                              str(raw / test_ids[1]))  # fmt: skip
  assert code == 0
  res = json.loads(out.out)["specimens"]
  assert [r["specimen"] for r in res] == [sid, test_ids[1]]
  for r in res:
    assert set(r["probabilities"]) == set(classes)
    assert sum(r["probabilities"].values()) == pytest.approx(1, abs=1e-4)
    assert r["seconds"] < 1.0  # the paper's intraoperative claim, on this CPU
  # Same prediction as the evaluation of the built (preprocessed) test image.
  row = next(x for x in (t / "predictions.csv").read_text().splitlines() if x.startswith(sid))
  probs = [float(x) for x in row.split(",")[3:]]
  np.testing.assert_allclose(list(res[0]["probabilities"].values()), probs, atol=2e-4)

  # A specimen with a missing modality: a clear error naming the file.
  broken = tmp_path / "S_broken"
  broken.mkdir()
  first = sorted((raw / sid).iterdir())[0]
  (broken / first.name).write_bytes(first.read_bytes())
  code, _ = main_in_process(capsys, "predict", "--workdir", str(t), str(broken))
  assert "predict:" in str(code) and "S_broken" in str(code)


def check_experiment_table3_and_a_baseline(w, tmp_path, capsys):
  """``dlsjax experiment table3 --config experiment:tiny`` on the demo's data with every row but
  "- MPDS" (``--rows``; that row's genotype is checked without training it), rerun without
  recomputing; a baseline via ``train --config experiment:tiny,resnet18``.

  The table's search is the demo's own (the same config, asserted below), copied in as a
  finished search, which keeps this test within the suite's time budget; the experiment runs
  MPDS on it itself and must reach the demo's genotype.
  """
  import shutil
  import time

  import ml_collections

  from dlsjax import experiment
  from dlsjax.data import dataset

  exp = tmp_path / "exp"
  ds = dataset.load(w / "data_built")
  base = experiment.base_config("experiment:tiny", ds)
  table_rows = experiment.rows_for(experiment.TABLES["table3"], base)
  (mpds_cfg, _), (argmax_cfg, _) = (experiment.row_configs(r, base) for r in table_rows[:2])
  demo_cfg = ml_collections.ConfigDict(json.loads((w / "search" / "config.json").read_text()))
  key = experiment.search_key(mpds_cfg)
  assert key == experiment.search_key(demo_cfg) == experiment.search_key(argmax_cfg)
  assert demo_cfg.derive.to_dict() == mpds_cfg.derive.to_dict()
  s_dir = exp / "searches" / key
  shutil.copytree(w / "search", s_dir)
  for name in ("genotype.json", "derivation_log.json", "genotype.png"):
    (s_dir / name).unlink()  # the demo's MPDS result: the experiment derives its own
  picked = ["DLS-DARTS", "- Fusing Stem", "- FL Stem", "- Learnable Stems"]
  code, out = main_in_process(capsys, "experiment", "table3", "--data-dir", str(w / "data_built"),
                              "--workdir", str(exp), "--config", "experiment:tiny", "--rows",
                              ",".join(picked))  # fmt: skip
  assert code == 0, out
  md = (exp / "table3.md").read_text()
  lines = md.splitlines()
  start = lines.index("| Ablation Part | ACC | Δ ACC | AUC | Δ AUC |")
  rows = lines[start : lines.index("", start)]
  labels = [r.split(" | ")[0][2:] for r in rows[2:]]
  assert labels == ["DLS-DARTS", "- MPDS", "- Fusing Stem", "- FL Stem", "- Learnable Stems"]
  assert rows[2].split(" | ")[2] == "+0.000"  # Δ of the reference row
  assert rows[3].split(" | ")[1:] == ["not run"] * 3 + ["not run |"]
  assert "Not run (`--rows`):" in md and "- - MPDS: not selected" in md
  assert "`train.epochs` | 110 | 2 |" in md  # the budget's reductions are stated
  recs = list(__import__("csv").DictReader((exp / "table3.csv").open()))
  assert [r["status"] for r in recs] == ["done", "not run", "done", "done", "done"]
  for r in recs[:1] + recs[2:]:
    assert float(r["acc_lo"]) <= float(r["acc"]) <= float(r["acc_hi"])
  # One search serves every row; MPDS and argmax genotypes differ in source.
  assert len(list((exp / "searches").iterdir())) == 1
  assert recs[0]["genotype"].endswith("genotype_mpds.json")
  assert (s_dir / "genotype_mpds.json").read_text() == (w / "search" / "genotype.json").read_text()
  g = experiment.ensure_genotype(argmax_cfg, s_dir, ds, progress=False)
  assert g.name == "genotype_argmax.json" and g.is_file()
  # The tiny budget's stems already concatenate: the stem ablations are the DLS-DARTS row itself,
  # trained once.
  assert {r["dir"] for r in recs[2:]} == {recs[0]["dir"]}
  stamps = {p: p.stat().st_mtime for p in exp.glob("rows/*/row.json")}
  assert len(stamps) == 1
  t0 = time.perf_counter()
  assert experiment.run_table(
    "table3", w / "data_built", exp, config="experiment:tiny", only=picked, progress=False
  )
  assert time.perf_counter() - t0 < 60
  assert {p: p.stat().st_mtime for p in exp.glob("rows/*/row.json")} == stamps  # nothing redone
  with pytest.raises(experiment.ExperimentError, match=r"table3 has no row \['nope'\]"):
    experiment.run_table("table3", w / "data_built", exp, config="experiment:tiny", only=["nope"])

  # A baseline as a config variant (`train --config experiment:tiny,resnet18`), evaluated
  # like the NAS model.
  t = tmp_path / "resnet" / "train"
  code, out = main_in_process(
    capsys, "train", "--config", "experiment:tiny,resnet18", "--data-dir",
    str(w / "data_built"), "--workdir", str(t), "--config.train.epochs=1",
  )  # fmt: skip
  assert code == 0, out
  result = evaluate.evaluate(t, trials=20, throughput_batches=0)
  assert 0 <= result["pooled"]["auc_micro"] <= 1 and not (t / "genotype.json").exists()
  assert result["model"]["params_m"] > 0 and result["model"]["flops_g"] > 0
  experiment.plot_comparison(
    [{"label": "resnet18", "status": "done", "dir": "resnet", "runs": 1, "mean": result["mean"]}],
    tmp_path, tmp_path / "roc.png", title="x",
  )  # fmt: skip
  assert (tmp_path / "roc.png").stat().st_size > 5_000
