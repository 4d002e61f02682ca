"""The launch scripts as programs: DRY_RUN=1 prints the exact commands, and they parse."""

import os
import pathlib
import shlex
import subprocess

import pytest

from dlsjax import main

LAUNCH = pathlib.Path(__file__).resolve().parents[1] / "launch"
TPU_ENV = {"PROJECT": "proj", "ZONE": "us-central2-b", "TPU": "dlsjax-v4", "BUCKET": "gs://bkt/dj"}


def dry_run(script: str, *args, **env) -> tuple[list[list[str]], str]:
  """The commands ``script`` would run (each split into words) and its stderr."""
  e = {**os.environ, "DRY_RUN": "1", **env}
  out = subprocess.run(
    ["bash", str(LAUNCH / script), *args], capture_output=True, text=True, env=e, timeout=60
  )
  assert out.returncode == 0, out.stderr
  return [shlex.split(line) for line in out.stdout.splitlines()], out.stderr


def remote(cmd: list[str]) -> str:
  """The ``--command`` a ``gcloud ... ssh`` line runs on the workers."""
  return cmd[cmd.index("--command") + 1]


def dlsjax_args(shell: str) -> list[str]:
  """The dlsjax arguments of ``cd dlsjax && [ENV=...] .venv/bin/dlsjax ...``."""
  words = shlex.split(shell)
  return words[words.index(".venv/bin/dlsjax") + 1 :]


def parses(args: list[str]) -> None:
  from dlsjax import configs

  rest, overrides = configs.split_flags(args)
  main.build_parser().parse_args(rest)  # SystemExit on an unknown flag
  for key, _ in overrides:
    assert key.split(".")[0] in ("search", "train", "derive", "model", "data", "seed")


@pytest.mark.parametrize("accelerator,hosts", [("v4-8", 1), ("v4-32", 4)])
def test_tpu_vm_search_dry_run(accelerator, hosts):
  cmds, err = dry_run(
    "tpu_vm_search.sh", "--config.search.epochs=2", ACCELERATOR=accelerator, **TPU_ENV
  )
  assert f"slice {accelerator}: {hosts} host(s)" in err
  create, install, search, derive = cmds
  assert create[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "dlsjax-v4"]
  assert ["--accelerator-type", accelerator] == create[6:8]
  assert ["--project", "proj", "--zone", "us-central2-b"] == create[-4:]
  assert "--worker=all" in install and "'jax[tpu]'" in remote(install)
  assert "'.[gcs]'" in remote(install)
  # Every worker runs the same search, gs:// data and workdir, resuming after a preemption.
  assert "--worker=all" in search
  args = dlsjax_args(remote(search))
  assert args == [
    "search", "--config", "paper", "--data-dir", "gs://bkt/dj/data/built",
    "--workdir", "gs://bkt/dj/runs/search", "--resume", "--config.search.epochs=2",
  ]  # fmt: skip
  parses(args)
  # The derivation runs once, on worker 0, with that host's chips only on a multi-host slice.
  assert "--worker=0" in derive
  parses(dlsjax_args(remote(derive)))
  assert ("TPU_PROCESS_BOUNDS=1,1,1" in remote(derive)) == (hosts > 1)


def test_tpu_vm_train_dry_run_and_missing_settings():
  cmds, _ = dry_run("tpu_vm_train.sh", ACCELERATOR="v4-32", SPOT="1", RUNS="3", **TPU_ENV)
  create, _, train, evaluate = cmds
  assert "--spot" in create
  args = dlsjax_args(remote(train))
  parses(args)
  assert args[args.index("--genotype") + 1] == "gs://bkt/dj/runs/search/genotype.json"
  assert args[args.index("--runs") + 1] == "3" and "--resume" in args
  parses(dlsjax_args(remote(evaluate)))
  e = {k: v for k, v in os.environ.items()}
  e.update(DRY_RUN="1", PROJECT="p", ZONE="z", TPU="t")
  out = subprocess.run(
    ["bash", str(LAUNCH / "tpu_vm_train.sh")], capture_output=True, text=True, env=e
  )
  assert out.returncode != 0 and "set BUCKET" in out.stderr
  out = subprocess.run(
    ["bash", str(LAUNCH / "tpu_vm_train.sh")],
    capture_output=True, text=True, env={**e, "BUCKET": "gs://b", "ACCELERATOR": "v9-8"},
  )  # fmt: skip
  assert out.returncode != 0 and "unknown accelerator type v9-8" in out.stderr


def test_gpu_local_dry_run():
  cmds, _ = dry_run("gpu_local.sh", "--config.search.epochs=3", DATA="gs://bkt/built", RUN="r")
  assert cmds[1][-1] == "jax[cuda12]"
  stages = [c[1:] for c in cmds if c[0] == ".venv/bin/dlsjax"]
  assert [s[0] for s in stages] == ["search", "derive", "train", "evaluate"]
  for s in stages:
    parses(s)
  assert "--resume" in stages[0] and "--resume" in stages[2]
  assert stages[0][-1:] == ["--config.search.epochs=3"]


def test_launch_scripts_are_valid_bash():
  for script in LAUNCH.glob("*.sh"):
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert out.returncode == 0, f"{script.name}: {out.stderr}"
