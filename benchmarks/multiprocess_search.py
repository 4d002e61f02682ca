"""Search step time with several local processes: pmap against shard_map, same data and config.

Starts ``--processes`` CLI searches (``jax.distributed`` on localhost, ``--devices``
CPU devices each), one job per parallel mode and repeat, alternating the modes back to back,
and reports the median seconds per step of the epochs after the first (the first holds
the compile). A one-process run with all the devices is the reference.

  python benchmarks/multiprocess_search.py --processes 2 --devices 2 --epochs 4 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
SETS = [
  "model.modalities=[{'name': 'US', 'channels': 3, 'fluorescence': False}]",
  "model.num_classes=2",
  "model.fusing_stem=identity",
  "model.fl_stem=off",
  "model.c_sin_search=8",
  "model.k_r=1",
  "model.resolution=16",
  "model.op_set=none,max_pool_3x3,skip_connect,sep_conv_3x3,dil_conv_3x3",
  "search.crop_padding=2",
]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def build(tmp: pathlib.Path) -> pathlib.Path:
  from dlsjax.data import builder, npz

  npz.from_npz(ROOT / "tests/data/breastmnist_subset.npz", tmp / "folder", modality="US")
  builder.build(tmp / "folder", tmp / "built", builder.BuildOptions(resolution=16))
  return tmp / "built"


def search(data, workdir, *, processes, devices, mode, epochs, batch) -> dict:
  sets = [*SETS, f"search.parallel={mode}", f"search.epochs={epochs}", f"search.batch_size={batch}"]
  flags = [f"--config.{s}" for s in sets]
  args = [sys.executable, "-m", "dlsjax.main", "search", "--config", "paper", "--data-dir",
          str(data), "--workdir", str(workdir), *flags]  # fmt: skip
  env = {**os.environ, "JAX_PLATFORMS": "cpu",
         "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}  # fmt: skip
  port, procs, t0 = free_port(), [], time.perf_counter()
  for i in range(processes):
    extra = []
    if processes > 1:
      extra = ["--coordinator", f"localhost:{port}", "--num-processes", str(processes),
               "--process-id", str(i)]  # fmt: skip
    procs.append(subprocess.Popen([*args, *extra], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True))  # fmt: skip
  for p in procs:
    _, err = p.communicate()
    if p.returncode:
      raise SystemExit(err[-3000:])
  wall = time.perf_counter() - t0
  recs = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
  per_epoch = [r["seconds"] for r in recs[1:]]
  return {
    "wall_s": wall,
    "epoch_s": statistics.median(per_epoch),
    "train_loss": recs[-1]["train_loss"],
  }


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--processes", type=int, default=2)
  ap.add_argument("--devices", type=int, default=2, help="CPU devices per process")
  ap.add_argument("--epochs", type=int, default=4)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--repeats", type=int, default=2)
  a = ap.parse_args()
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    data = build(tmp)
    n_steps = 20 // a.batch  # the subset's search halves hold 20 images each
    rows = []
    for r in range(a.repeats):
      for mode in ("pmap", "shard_map"):
        for procs, devs in ((a.processes, a.devices), (1, a.processes * a.devices)):
          if procs == 1 and mode == "shard_map":
            continue
          out = search(data, tmp / f"{mode}_{procs}_{r}", processes=procs, devices=devs,
                       mode=mode, epochs=a.epochs, batch=a.batch)  # fmt: skip
          out.update(mode=mode, processes=procs, devices_per_process=devs, repeat=r,
                     step_s=out["epoch_s"] / n_steps)  # fmt: skip
          rows.append(out)
          print(json.dumps(out), flush=True)
    for key in sorted({(x["mode"], x["processes"]) for x in rows}):
      steps = [x["step_s"] for x in rows if (x["mode"], x["processes"]) == key]
      print(f"{key[0]:9s} {key[1]} process(es): median {statistics.median(steps):.3f} s/step "
            f"over {len(steps)} runs")  # fmt: skip


if __name__ == "__main__":
  main()
