"""The search job: outputs, errors, and SIGKILL + --resume reproducing an uninterrupted run."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import built_breast_subset

# A cells-only supernet on one modality (BreastMNIST subset), small enough to
# compile in seconds; the search loop, checkpoints and data order are what is tested.
TINY = [
  "model.modalities=[{'name': 'US', 'channels': 3, 'fluorescence': False}]",
  "model.num_classes=2",
  "model.fusing_stem=identity",
  "model.fl_stem=off",
  "model.c_sin_search=4",
  "model.cell_channels_divisor=2",
  "model.k_r=1",
  "model.resolution=8",
  "model.op_set=none,skip_connect,sep_conv_3x3",
  "search.batch_size=4",
  "search.epochs=2",
  "search.crop_padding=2",
  "search.checkpoint_every_steps=2",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return built_breast_subset(tmp_path_factory.mktemp("search_data"))


def command(data_dir, workdir, *extra):
  sets = [f"--config.{s}" for s in TINY]
  return [
    sys.executable, "-m", "dlsjax.main", "search", "--config", "paper",
    "--data-dir", str(data_dir), "--workdir", str(workdir), *sets, *extra,
  ]  # fmt: skip


def run(cmd, **kw):
  out = subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)
  assert out.returncode == 0, out.stderr[-3000:]
  return out


def derive_cmd(workdir, *extra):
  return [sys.executable, "-m", "dlsjax.main", "derive", "--workdir", str(workdir), *extra]


@pytest.mark.heavy
def test_finished_search_resume_and_derive(data_dir, tmp_path_factory, tmp_path):
  """One finished 2-epoch search serves both checks below (a search run is the costly part).

  A fixture shared by two tests ran the search twice under xdist (once per
  worker that happened to get a user), so the checks share one test instead.
  """
  full = tmp_path_factory.mktemp("full")
  run(command(data_dir, full))
  check_kill_and_resume_matches_uninterrupted_run(data_dir, full, tmp_path)
  check_derive_argmax_and_pt(full, tmp_path)


def check_kill_and_resume_matches_uninterrupted_run(data_dir, full, tmp_path):
  for f in ("alphas.npz", "alphas.png", "genotype_argmax.json", "config.json"):
    assert (full / f).is_file(), f
  records = [json.loads(line) for line in (full / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in records] == [1, 2]
  assert set(records[0]["alphas"]) == {"normal", "reduce"}
  assert all(np.isfinite(r["train_loss"]) and 0 <= r["val_acc"] <= 1 for r in records)
  assert list((full / "tb").iterdir())  # TensorBoard event file

  # Start again, SIGKILL once a mid-epoch checkpoint exists, then --resume.
  killed = tmp_path / "killed"
  proc = subprocess.Popen(
    command(data_dir, killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
  )
  ckpts = killed / "checkpoints"
  deadline = time.time() + 600
  while time.time() < deadline and proc.poll() is None:
    done = [p for p in ckpts.iterdir() if p.name.isdigit()] if ckpts.is_dir() else []
    if any(int(p.name) in (2, 4) for p in done):  # mid-epoch (5 steps per epoch)
      break
    time.sleep(0.2)
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait()
  assert not (killed / "alphas.npz").exists()
  # An unfinished search cannot be derived from (the CLI in this process: these fail early).
  with pytest.raises(SystemExit, match=r"not finished.*--resume|--resume.*not finished"):
    in_process(derive_cmd(killed))
  # Without --resume the workdir is protected.
  with pytest.raises(SystemExit, match="pass --resume"):
    in_process(command(data_dir, killed))
  last = max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())
  assert last % 5, f"killed at an epoch end (step {last}); the test wants mid-epoch"
  out = run(command(data_dir, killed, "--resume"))
  # It resumed from that checkpoint (not from step 0) and ran the remaining steps.
  assert f"resuming at epoch 1, batch {last} (step {last})" in out.stderr
  assert f"ran {10 - last} steps in this call (from step {last})" in out.stderr

  a, b = np.load(full / "alphas.npz"), np.load(killed / "alphas.npz")
  for part in a.files:
    np.testing.assert_allclose(a[part], b[part], rtol=1e-6, atol=1e-7)
  assert (full / "genotype_argmax.json").read_text() == (
    killed / "genotype_argmax.json"
  ).read_text()
  resumed = [json.loads(line) for line in (killed / "metrics.jsonl").read_text().splitlines()]
  assert [r["epoch"] for r in resumed] == [1, 2]
  np.testing.assert_allclose(resumed[-1]["train_loss"], records[-1]["train_loss"], rtol=1e-5)


def in_process(cmd):
  """A CLI command line (as built for a subprocess) run through ``main.main`` in this process."""
  from dlsjax import main

  return main.main(cmd[3:])  # drop: python -m dlsjax.main


def test_search_errors_name_the_problem(data_dir, tmp_path):
  bad = [*command(data_dir, tmp_path / "w"), "--config.model.num_classes=4"]
  with pytest.raises(SystemExit, match=r"2 classes.*model\.num_classes is 4"):
    in_process(bad)
  with pytest.raises(SystemExit, match="not a built dlsjax dataset"):
    in_process(command(tmp_path / "nothing", tmp_path / "w"))


def check_derive_argmax_and_pt(full_run, tmp_path):
  """MPDS through the CLI is checked by tests/demo_test.py (the tiny demo derives with it)."""
  import shutil

  from dlsjax import derive, genotype

  derive.derive(full_run, method="argmax", progress=False)  # in-process: no compile needed
  assert (full_run / "genotype.json").read_text() == (full_run / "genotype_argmax.json").read_text()

  pt_dir = tmp_path / "pt"
  shutil.copytree(full_run, pt_dir)
  overrides = dict(pt_tune_epochs=1, pt_tune_max_steps=1)
  derive.derive(pt_dir, method="pt", metric="loss", overrides=overrides, progress=False)
  logd = json.loads((pt_dir / "derivation_log.json").read_text())
  assert logd["method"] == "pt" and logd["pt_tuning_steps"] == len(logd["decisions"])
  order = [(d["part"], d["kind"], d.get("edge", d.get("node"))) for d in logd["decisions"]]
  assert order != sorted(order)  # random order
  genotype.Genotype.load(pt_dir / "genotype.json").validate()

  with pytest.raises(SystemExit, match="not a search run"):
    in_process(derive_cmd(tmp_path / "nothing"))


@pytest.mark.heavy
def test_vmapped_seeds_equal_the_single_runs(data_dir, tmp_path):
  """``--seeds 2``: one vmapped program; W/seed1 = ``--config.seed=1`` alone (alphas, records),
  also after a SIGTERM and ``--resume``."""
  many, one = tmp_path / "many", tmp_path / "one"
  # SIGTERM (one process) once the handler is in place: a checkpoint of step 1 in every seed
  # folder, exit code 75; --resume continues both seeds from there.
  proc = subprocess.Popen(
    command(data_dir, many, "--seeds", "2"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    text=True,
  )  # fmt: skip
  deadline = time.time() + 600
  while not (many / "seed1" / "config.json").exists():
    assert time.time() < deadline and proc.poll() is None, "the search ended early"
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=600)
  assert proc.returncode == 75, err[-2000:]
  assert "preempted (SIGTERM); saved the checkpoint of step 1 (epoch 1, batch 1)" in err
  for k in (0, 1):
    assert [p.name for p in (many / f"seed{k}" / "checkpoints").iterdir() if p.name.isdigit()] == [
      "1"
    ]
  out = run(command(data_dir, many, "--seeds", "2", "--resume"))  # DropPath 0.2 included
  assert "ran 9 steps in this call (from step 1)" in out.stderr
  run(command(data_dir, one, "--config.seed=1"))
  assert "seed1/genotype_argmax.json" in out.stdout
  for f in ("alphas.npz", "genotype_argmax.json", "config.json", "metrics.jsonl"):
    assert (many / "seed0" / f).is_file() and (many / "seed1" / f).is_file(), f
  a, b = np.load(many / "seed1" / "alphas.npz"), np.load(one / "alphas.npz")
  for part in a.files:
    np.testing.assert_allclose(a[part], b[part], rtol=1e-4, atol=1e-6)
  assert (many / "seed1" / "genotype_argmax.json").read_text() == (
    one / "genotype_argmax.json"
  ).read_text()
  ra = [json.loads(x) for x in (many / "seed1" / "metrics.jsonl").read_text().splitlines()]
  rb = [json.loads(x) for x in (one / "metrics.jsonl").read_text().splitlines()]
  for x, y in zip(ra, rb, strict=True):
    np.testing.assert_allclose(x["train_loss"], y["train_loss"], rtol=1e-4)
  assert json.loads((many / "seed1" / "config.json").read_text())["seed"] == 1
  # The two seeds searched differently (own data order and initial state).
  s0 = np.load(many / "seed0" / "alphas.npz")
  assert not np.allclose(s0["normal"], a["normal"])
  # Each seed folder is a search run of its own: derive takes it.
  from dlsjax import derive

  derive.derive(many / "seed1", method="argmax", progress=False)
  assert (many / "seed1" / "genotype.json").is_file()
