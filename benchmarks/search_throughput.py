"""Images/s, compile time and peak memory of the search step.

    python benchmarks/search_throughput.py [--only NAME] [--steps N] [--batch B] [--cpu-devices N]
        [--config.model.dag_schedule=source ...]

Measurements (each in a fresh subprocess, so peak RSS is its own):
``darts_cifar_first_order``, ``darts_cifar_second_order`` (the canonical DARTS
CIFAR search: C=16, 8 cells, 8 ops, batch 64, 32x32, 10 classes) and
``paper_first_order``, ``paper_second_order`` (the paper config: batch 16,
64x64, 3 modalities, C_sin 48, 10 ops). Random inputs; one global batch of
each half per step, over all local devices (``jax.pmap``). images/s counts the
weight-half batch per step, as the DARTS code's throughput does. One JSON line
per measurement with ``name``, ``images_per_s``, ``step_s``, ``compile_s``,
``peak_rss_mb``, ``backend``.

``--cpu-devices N`` runs each measurement with ``N`` XLA host devices
(``--xla_force_host_platform_device_count``): on a CPU the step is then
data parallel over the cores, as ``dlsjax search`` is with the same
``XLA_FLAGS``; on a 2-core CPU 2 devices ran the canonical first-order step
1.1-1.2x faster than one (benchmarks/RESULTS.md).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import resource
import subprocess
import sys
import time

from dlsjax import configs

MEASUREMENTS = {
  "darts_cifar_first_order": ("darts_cifar", "first"),
  "darts_cifar_second_order": ("darts_cifar", "second"),
  "paper_first_order": ("paper", "first"),
  "paper_second_order": ("paper", "second"),
}


def peak_device_mb(devices) -> float | None:
  """Peak accelerator memory in use (MiB, largest over devices); None where not reported (CPU)."""
  peaks = [(d.memory_stats() or {}).get("peak_bytes_in_use") for d in devices]
  peaks = [p for p in peaks if p is not None]
  return round(max(peaks) / 2**20) if peaks else None


def _progress(name: str, **fields) -> None:
  """A partial result on stderr, so a run cut off by a time limit still says how far it got."""
  print(json.dumps({"name": name, "partial": True, **fields}), file=sys.stderr, flush=True)


def measure(name: str, steps: int, batch: int | None, overrides=(), seeds: int = 0) -> dict:
  import jax
  import numpy as np

  from dlsjax import bilevel, runtime, search, sharding
  from dlsjax.configs import load as load_config
  from dlsjax.netspec import spec_from_config

  runtime.setup()
  config_name, order = MEASUREMENTS[name]
  cfg = load_config(config_name, list(overrides))
  spec = spec_from_config(cfg.model, phase="search")
  b = batch or cfg.search.batch_size
  h = bilevel.SearchHParams.from_config(cfg.search, steps_per_epoch=1000)
  h = bilevel.SearchHParams(**{**h.__dict__, "order": order})
  step = bilevel.make_search_step(spec, h)
  if seeds:  # `dlsjax search --seeds N`: one vmapped step over N states and batches
    step = search.vmap_seeds(step)
  runner = sharding.Runner(step, mode="pmap")
  rng = np.random.default_rng(0)
  n = max(seeds, 1)

  def make_batch():
    r = spec.resolution
    lead = (b, seeds) if seeds else (b,)
    labels = rng.integers(0, spec.num_classes, lead)
    return runner.shard_batch(
      {
        "images": {
          m.name: rng.random((*lead, r, r, m.channels), np.float32) for m in spec.modalities
        },
        "label": labels.astype(np.int32),
        "target": np.eye(spec.num_classes, dtype=np.float32)[labels],
      }
    )

  t0 = time.perf_counter()
  states = [bilevel.init_state(spec, h, jax.random.PRNGKey(k)) for k in range(n)]
  state = runner.replicate(search.stack_trees(states) if seeds else states[0])
  init_s = time.perf_counter() - t0
  _progress(name, init_s=round(init_s, 1))
  keys = [jax.random.PRNGKey(k + 1) for k in range(n)]
  tb, vb, key = make_batch(), make_batch(), search.stack_trees(keys) if seeds else keys[0]
  t0 = time.perf_counter()
  state, m = runner(state, tb, vb, key)  # compile + first step
  jax.block_until_ready(m)
  first_s = time.perf_counter() - t0
  _progress(name, first_step_s=round(first_s, 1))
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = runner(state, tb, vb, key)
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / steps
  return {
    "name": name,
    "seeds": n,
    "images_per_s": round(n * b / step_s, 3),
    "step_s": round(step_s, 2),
    "compile_s": round(first_s - step_s, 1),
    "init_s": round(init_s, 1),
    "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 0),
    "peak_device_mb": peak_device_mb(runner.devices),
    "batch": b,
    "steps": steps,
    "devices": runner.n,
    "backend": jax.default_backend(),
    "device_kind": runner.devices[0].device_kind,
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--only", choices=sorted(MEASUREMENTS), help="run one measurement")
  ap.add_argument("--steps", type=int, default=2, help="timed steps after the compile")
  ap.add_argument("--batch", type=int, help="global batch (default: the config's)")
  ap.add_argument("--cpu-devices", type=int, help="XLA host devices (CPU data parallelism)")
  ap.add_argument(
    "--seeds", type=int, default=0,
    help="N searches as one vmapped step (search --seeds N); images/s counts all of them",
  )  # fmt: skip
  ap.add_argument(
    "--vs-torch", action="store_true",
    help="after each darts_cifar_* measurement, time the PyTorch reference "
    "(darts_torch_reference.py, same order, batch, steps and threads) back to back and print "
    "the ratio: every figure a same-host ratio",
  )  # fmt: skip
  ap.add_argument("--inline", action="store_true", help=argparse.SUPPRESS)
  argv, overrides = configs.split_flags(sys.argv[1:] if argv is None else argv)
  args = ap.parse_args(argv)  # and --config.KEY=VALUE: config overrides
  if args.vs_torch and not any(
    n.startswith("darts_cifar") for n in ([args.only] if args.only else MEASUREMENTS)
  ):
    raise SystemExit("--vs-torch compares the darts_cifar_* steps (the PyTorch reference's)")
  names = [args.only] if args.only else list(MEASUREMENTS)
  if args.inline:
    print(json.dumps(measure(names[0], args.steps, args.batch, overrides, args.seeds)), flush=True)
    return 0
  for name in names:  # one process each: peak RSS and compile caches are per measurement
    cmd = [sys.executable, __file__, "--inline", "--only", name, "--steps", str(args.steps)]
    if args.batch:
      cmd += ["--batch", str(args.batch)]
    if args.seeds:
      cmd += ["--seeds", str(args.seeds)]
    cmd += [f"--config.{k}={v}" for k, v in overrides]
    env = dict(os.environ)
    if args.cpu_devices:
      flag = f"--xla_force_host_platform_device_count={args.cpu_devices}"
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {flag}".strip()
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not lines:
      print(json.dumps({"name": name, "error": out.stderr.strip().splitlines()[-1:]}), flush=True)
      continue
    print(lines[-1], flush=True)
    if args.vs_torch and name.startswith("darts_cifar"):
      print(json.dumps(vs_torch(json.loads(lines[-1]), env)), flush=True)
  return 0


def vs_torch(ours: dict, env: dict) -> dict:
  """The PyTorch reference of ``ours`` (a darts_cifar_* result) run now, and the ratio.

  The reference gets as many threads as ours has host devices x intra-op
  threads would use: all the cores (torch's default), on the same machine, in
  the same minute.
  """
  order = "second" if "second" in ours["name"] else "first"
  here = pathlib.Path(__file__).resolve().parent
  cmd = [sys.executable, str(here / "darts_torch_reference.py"), "--order", order,
         "--steps", str(ours["steps"]), "--batch", str(ours["batch"]), "--device", "cpu"
         if ours["backend"] == "cpu" else "cuda"]  # fmt: skip
  out = subprocess.run(cmd, capture_output=True, text=True, env=env)
  lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
  if out.returncode or not lines:
    why = (out.stderr.strip().splitlines() or ["no output"])[-1]
    if "No module named 'torch'" in out.stderr:
      why = "PyTorch is not installed here (pip install torch==2.13.0: the CPU build on this disk)"
    return {"name": f"{ours['name']}_vs_torch", "error": why}
  ref = json.loads(lines[-1])
  return {
    "name": f"{ours['name']}_vs_torch",
    "ratio": round(ours["images_per_s"] / ref["images_per_s"], 2),
    "dlsjax_images_per_s": ours["images_per_s"],
    "torch_images_per_s": ref["images_per_s"],
    "torch": ref.get("torch"),
    "batch": ours["batch"],
    "steps": ours["steps"],
  }


if __name__ == "__main__":
  sys.exit(main())
