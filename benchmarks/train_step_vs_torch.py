"""Training step of ResNet-18 (CIFAR stem): dlsjax against PyTorch, back to back on one host.

    python benchmarks/train_step_vs_torch.py [--batch 64] [--size 28] [--steps 5]
        [--xla-flags "--xla_cpu_...=..."] [--skip-torch]

dlsjax: ``dlsjax train --config medmnist:resnet18`` with ``stem=cifar, input_size=0`` (the
``medmnist`` recipe's ResNet-18: 3x3/1 stem, no max pool, width 64, 11.2 M
parameters), one jitted step (forward, focal/CE loss, backward, SGD with momentum
and weight decay) on one device. PyTorch: the same network restated here
(torchvision is not installable beside this host's torch build), SGD with momentum
and weight decay, ``torch.get_num_threads()`` threads. Each side runs in its own
subprocess, dlsjax first, then PyTorch, then the ratio. ``--xla-flags`` is added to
``XLA_FLAGS`` of the dlsjax side (to compare XLA CPU code paths).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def jax_side(batch: int, size: int, steps: int) -> dict:
  import jax
  import numpy as np

  from dlsjax import runtime, train
  from dlsjax.configs import load as load_config
  from dlsjax.netspec import spec_from_config

  runtime.setup()
  cfg = load_config(
    "medmnist:resnet18",
    [
      "model.modalities=[{'name': 'image', 'channels': 3, 'fluorescence': False}]",
      "model.num_classes=2", "classes=['a','b']", f"model.resolution={size}",
      "model.baselines.resnet18.stem=cifar", "model.baselines.resnet18.input_size=0",
      f"train.batch_size={batch}",
    ],
  )  # fmt: skip
  spec = spec_from_config(cfg.model, phase="train")
  h = train.TrainHParams.from_config(cfg.train, steps_per_epoch=100)
  model = train.make_model(cfg, spec, None, h, axis=None)
  state = train.init_state(model, h, jax.random.PRNGKey(0))
  params = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state["params"]))
  step = jax.jit(train.make_train_step(model, h, axis_name=None), donate_argnums=0)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, 2, batch)
  b = {
    "images": {"image": rng.random((batch, size, size, 3), np.float32)},
    "label": labels.astype(np.int32),
    "target": np.eye(2, dtype=np.float32)[labels],
    "mask": np.ones(batch, bool),
  }
  key = jax.random.PRNGKey(1)
  t0 = time.perf_counter()
  state, m = step(state, b, key)
  jax.block_until_ready(m)
  first = time.perf_counter() - t0
  t0 = time.perf_counter()
  for _ in range(steps):
    state, m = step(state, b, key)
  jax.block_until_ready(m)
  step_s = (time.perf_counter() - t0) / steps
  return {
    "side": "dlsjax", "step_s": round(step_s, 3), "images_per_s": round(batch / step_s, 2),
    "compile_s": round(first - step_s, 1), "params_m": round(params / 1e6, 2),
    "xla_flags": os.environ.get("XLA_FLAGS", ""),
  }  # fmt: skip


def torch_side(batch: int, size: int, steps: int) -> dict:
  import torch
  from torch import nn

  class Block(nn.Module):
    def __init__(self, cin, cout, stride):
      super().__init__()
      self.c1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
      self.b1 = nn.BatchNorm2d(cout)
      self.c2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
      self.b2 = nn.BatchNorm2d(cout)
      self.short = None
      if stride != 1 or cin != cout:
        self.short = nn.Sequential(
          nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
        )

    def forward(self, x):
      y = torch.relu(self.b1(self.c1(x)))
      y = self.b2(self.c2(y))
      return torch.relu(y + (x if self.short is None else self.short(x)))

  layers = [nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.ReLU()]
  cin = 64
  for i, cout in enumerate((64, 128, 256, 512)):
    for j in range(2):
      layers.append(Block(cin, cout, 2 if (i > 0 and j == 0) else 1))
      cin = cout
  net = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 2))
  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=3e-4)
  x = torch.rand(batch, 3, size, size)
  y = torch.randint(0, 2, (batch,))

  def step():
    opt.zero_grad(set_to_none=True)
    loss = nn.functional.cross_entropy(net(x), y)
    loss.backward()
    opt.step()
    return loss

  step()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  step_s = (time.perf_counter() - t0) / steps
  params = sum(p.numel() for p in net.parameters())
  return {
    "side": "torch", "step_s": round(step_s, 3), "images_per_s": round(batch / step_s, 2),
    "params_m": round(params / 1e6, 2), "threads": torch.get_num_threads(),
    "torch": torch.__version__,
  }  # fmt: skip


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--size", type=int, default=28)
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--xla-flags", default="", help="added to XLA_FLAGS for the dlsjax side")
  ap.add_argument("--skip-torch", action="store_true")
  ap.add_argument("--side", choices=["dlsjax", "torch"], help=argparse.SUPPRESS)
  a = ap.parse_args(argv)
  if a.side:
    fn = jax_side if a.side == "dlsjax" else torch_side
    print(json.dumps(fn(a.batch, a.size, a.steps)), flush=True)
    return 0
  results = {}
  for side in ("dlsjax",) if a.skip_torch else ("dlsjax", "torch"):
    env = dict(os.environ)
    if side == "dlsjax" and a.xla_flags:
      env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} {a.xla_flags}".strip()
    cmd = [sys.executable, __file__, "--side", side, "--batch", str(a.batch), "--size",
           str(a.size), "--steps", str(a.steps)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    lines = [x for x in out.stdout.splitlines() if x.startswith("{")]
    if out.returncode or not lines:
      results[side] = {"side": side, "error": (out.stderr.strip().splitlines() or ["?"])[-1]}
    else:
      results[side] = json.loads(lines[-1])
    print(json.dumps(results[side]), flush=True)
  if "step_s" in results.get("dlsjax", {}) and "step_s" in results.get("torch", {}):
    ratio = results["torch"]["step_s"] / results["dlsjax"]["step_s"]
    print(json.dumps({"ratio_dlsjax_vs_torch": round(ratio, 2), "batch": a.batch, "size": a.size}))
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
