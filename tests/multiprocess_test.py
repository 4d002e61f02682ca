"""Several processes on one machine: ``jax.distributed`` with 2 processes x 2 CPU devices.

What a Cloud TPU VM slice does across hosts, run here as local processes: the
2-process search and training equal the 1-process, 4-device ones; SIGTERM
stops every process at one agreed step with a checkpoint and exit code 75, and
``--resume`` continues from that step; killing every process and resuming
gives the uninterrupted result; a resume under another job shape or config,
an unreachable coordinator and a batch that does not split are clear errors.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from conftest import built_breast_subset
from genotype_test import random_choice
from search_test import TINY

from dlsjax import distributed

STEPS_PER_EPOCH, EPOCHS = 5, 2  # the TINY search on the BreastMNIST subset, batch 4
TOTAL = STEPS_PER_EPOCH * EPOCHS


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  return built_breast_subset(tmp_path_factory.mktemp("mp_data"))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def env(devices: int) -> dict:
  e = dict(os.environ)
  e["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  e["JAX_PLATFORMS"] = "cpu"
  return e


def search_args(data_dir, workdir, *extra):
  sets = [f"--config.{s}" for s in TINY]
  return [
    "search", "--config", "paper", "--data-dir", str(data_dir), "--workdir", str(workdir),
    *sets, *extra,
  ]  # fmt: skip


def start(args, *, processes: int, devices: int, log_dir):
  """``processes`` CLI processes over ``devices`` CPU devices each (stdout+stderr to files)."""
  port = free_port()
  procs = []
  for i in range(processes):
    cmd = [sys.executable, "-m", "dlsjax.main", *args]
    if processes > 1:
      cmd += ["--coordinator", f"localhost:{port}", "--num-processes", str(processes)]
      cmd += ["--process-id", str(i), "--distributed-timeout", "120"]
    out = open(log_dir / f"p{i}.log", "w")  # closed in finish()
    procs.append(
      (subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env(devices)), out)
    )
  return procs


def finish(procs, log_dir, timeout=600):
  codes, logs = [], []
  for i, (p, out) in enumerate(procs):
    codes.append(p.wait(timeout=timeout))
    out.close()
    logs.append((log_dir / f"p{i}.log").read_text())
  return codes, logs


def run(args, *, processes, devices, log_dir, expect=0):
  log_dir.mkdir(parents=True, exist_ok=True)
  codes, logs = finish(start(args, processes=processes, devices=devices, log_dir=log_dir), log_dir)
  assert codes == [expect] * processes, "\n".join(log[-3000:] for log in logs)
  return logs


def wait_for(path, procs, timeout=300):
  deadline = time.time() + timeout
  while not path.exists():
    assert time.time() < deadline, f"{path} did not appear"
    assert all(p.poll() is None for p, _ in procs), "a process ended early"
    time.sleep(0.02)


def alphas(workdir):
  a = np.load(workdir / "alphas.npz")
  return {k: a[k] for k in a.files}


def records(workdir):
  return [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]


def assert_same_search(a, b):
  for part, x in alphas(a).items():
    np.testing.assert_allclose(x, alphas(b)[part], rtol=1e-5, atol=1e-7)
  assert (a / "genotype_argmax.json").read_text() == (b / "genotype_argmax.json").read_text()
  ra, rb = records(a), records(b)
  assert [r["epoch"] for r in ra] == [r["epoch"] for r in rb] == list(range(1, EPOCHS + 1))
  for x, y in zip(ra, rb, strict=True):  # the interrupted epoch's record included
    for k in ("train_loss", "train_acc", "val_loss", "val_acc"):
      np.testing.assert_allclose(x[k], y[k], rtol=1e-5, atol=1e-7)


def resumed_from(log: str) -> tuple[int, int]:
  """(step resumed from, steps run) from a resumed search's log."""
  at = re.search(r"resuming at epoch \d+, batch \d+ \(step (\d+)\)", log)
  ran = re.search(r"ran (\d+) steps in this call \(from step (\d+)\)", log)
  assert at and ran, log[-2000:]
  assert int(ran.group(2)) == int(at.group(1))
  return int(at.group(1)), int(ran.group(1))


@pytest.mark.heavy
def test_two_processes_search_like_one_and_survive_preemption_and_kills(data_dir, tmp_path):
  one = tmp_path / "one"
  run(search_args(data_dir, one), processes=1, devices=4, log_dir=tmp_path / "log_one")

  # SIGTERM to process 1 once its handler is in place (config.json is written after it):
  # both processes stop at the first step, save it and exit with 75. This run's one step
  # is under shard_map over a mesh of both processes' devices; the resume runs under pmap
  # (parallel may change between a run and its resume), so both APIs are in the result.
  pre = tmp_path / "preempted"
  log_dir = tmp_path / "log_pre"
  log_dir.mkdir()
  args = search_args(data_dir, pre, "--config.search.parallel=shard_map")
  procs = start(args, processes=2, devices=2, log_dir=log_dir)
  wait_for(pre / "config.json", procs)
  procs[1][0].send_signal(signal.SIGTERM)
  codes, logs = finish(procs, log_dir)
  assert codes == [distributed.PREEMPTED_EXIT_CODE] * 2, logs[0][-2000:]
  assert "process 1 of 2, 2 local / 4 global devices" in logs[1]
  for log in logs:
    assert "preempted (SIGTERM); saved the checkpoint of step 1 (epoch 1, batch 1)" in log
  assert sorted(int(p.name) for p in (pre / "checkpoints").iterdir() if p.name.isdigit()) == [1]
  assert not (pre / "alphas.npz").exists()
  # A resume under another job shape or config is refused, naming what differs.
  logs = run(search_args(data_dir, pre, "--resume"), processes=1, devices=4,
             log_dir=tmp_path / "log_shape", expect=1)  # fmt: skip
  assert "written by 2 process(es) with 4 device(s), this run has 1 with 4" in logs[0]
  args = search_args(data_dir, pre, "--resume", "--config.search.w_lr=0.5")
  logs = run(args, processes=2, devices=2, log_dir=tmp_path / "log_cfg", expect=1)
  assert "search.w_lr: 0.0025 then, 0.5 now" in logs[0]
  logs = run(search_args(data_dir, pre, "--resume"), processes=2, devices=2,
             log_dir=tmp_path / "log_pre_resume")  # fmt: skip
  assert [resumed_from(log) for log in logs] == [(1, TOTAL - 1)] * 2
  assert_same_search(one, pre)

  # SIGKILL to every process once a mid-epoch checkpoint exists, then --resume.
  killed = tmp_path / "killed"
  log_dir = tmp_path / "log_kill"
  log_dir.mkdir()
  procs = start(search_args(data_dir, killed), processes=2, devices=2, log_dir=log_dir)
  wait_for(killed / "checkpoints" / "2", procs)
  for p, _ in procs:
    p.send_signal(signal.SIGKILL)
  finish(procs, log_dir)
  steps = [int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit()]
  last = max(steps)
  assert last % STEPS_PER_EPOCH, f"killed at an epoch end ({steps}); the test wants mid-epoch"
  logs = run(search_args(data_dir, killed, "--resume"), processes=2, devices=2,
             log_dir=tmp_path / "log_kill_resume")  # fmt: skip
  assert [resumed_from(log) for log in logs] == [(last, TOTAL - last)] * 2
  assert_same_search(one, killed)


def train_args(data_dir, genotype, workdir, *extra):
  return [
    "train", "--config", "demo:tiny", "--data-dir", str(data_dir), "--workdir", str(workdir),
    "--genotype", str(genotype), "--config.train.batch_size=8",
    # CutMix pairs images within a process's rows, so it differs by design; off here.
    "--config.train.cutmix_beta=0.0", *extra,
  ]  # fmt: skip


@pytest.mark.heavy
def test_two_processes_train_like_one_and_sigterm_resumes(data_dir, tmp_path):
  from dlsjax import genotype, netspec, train
  from dlsjax.configs import get_config

  # A random genotype of the demo:tiny training network (no search needed).
  cfg = get_config("demo", "tiny")
  cfg.model.modalities = [{"name": "US", "channels": 3, "fluorescence": False}]
  cfg.model.num_classes, cfg.classes = 2, ["benign", "malignant"]
  spec = netspec.spec_from_config(cfg.model, phase="train")
  choice = random_choice(spec)
  geno = tmp_path / "genotype.json"
  genotype.Genotype.from_choice(choice, spec.topologies(), spec.op_set).save(geno)

  one, two = tmp_path / "one", tmp_path / "two"
  logs = run(train_args(data_dir, geno, one), processes=1, devices=4, log_dir=tmp_path / "l1")
  total = int(re.search(r"ran (\d+) steps in this call \(from step 0\)", logs[0]).group(1))
  run(train_args(data_dir, geno, two), processes=2, devices=2, log_dir=tmp_path / "l2")
  a, b = train.load(one), train.load(two)
  for x, y in zip(leaves(a.variables[0]), leaves(b.variables[0]), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)

  # SIGTERM in one process: stop at the first step with a checkpoint, exit 75, resume.
  pre = tmp_path / "pre"
  log_dir = tmp_path / "l3"
  log_dir.mkdir()
  procs = start(train_args(data_dir, geno, pre), processes=1, devices=4, log_dir=log_dir)
  wait_for(pre / "config.json", procs)
  procs[0][0].send_signal(signal.SIGTERM)
  codes, logs = finish(procs, log_dir)
  assert codes == [distributed.PREEMPTED_EXIT_CODE], logs[0][-2000:]
  assert "saved the checkpoint of step 1 (epoch 1, batch 1)" in logs[0]
  logs = run(train_args(data_dir, geno, pre, "--resume"), processes=1, devices=4,
             log_dir=tmp_path / "l4")  # fmt: skip
  assert re.search(r"resuming at epoch 1, batch 1 \(step 1\)", logs[0])
  ran = int(re.search(r"ran (\d+) steps in this call \(from step 1\)", logs[0]).group(1))
  assert ran == total - 1
  c = train.load(pre)
  for x, y in zip(leaves(a.variables[0]), leaves(c.variables[0]), strict=True):
    np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)


def leaves(tree):
  import jax

  return [np.asarray(x) for x in jax.tree.leaves(tree)]


def test_bad_multiprocess_settings_are_named(data_dir, tmp_path):
  # No coordinator at the address: a clear error, not an abort of JAX's client.
  args = search_args(data_dir, tmp_path / "w")
  cmd = [sys.executable, "-m", "dlsjax.main", *args, "--coordinator", f"localhost:{free_port()}",
         "--num-processes", "2", "--process-id", "1", "--distributed-timeout", "2"]  # fmt: skip
  out = subprocess.run(cmd, capture_output=True, text=True, env=env(2), timeout=120)
  assert out.returncode == 1
  assert "did not answer within 2 s" in out.stderr and "--coordinator" in out.stderr
  # A process id outside the count, and a count without the other settings.
  from dlsjax import main

  with pytest.raises(SystemExit, match=r"--process-id 2 is not in \[0, --num-processes 2\)"):
    main.main([*args, "--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"])
  with pytest.raises(SystemExit, match=r"needs --process-id"):
    main.main([*args, "--coordinator", "localhost:1", "--num-processes", "2"])
  # A global batch that does not split over the processes (both stop with the same error).
  logs = run(search_args(data_dir, tmp_path / "b", "--config.search.batch_size=5"),
             processes=2, devices=2, log_dir=tmp_path / "lb", expect=1)  # fmt: skip
  for log in logs:
    assert "search.batch_size 5 does not split over 2 processes" in log
