"""Images/s of the original DARTS search step in PyTorch: the baseline of `search_throughput.py`.

    python benchmarks/darts_torch_reference.py [--order first|second|both] [--steps N]
        [--batch 64] [--device cuda|cpu]

The original code (quark0/darts, `model_search.py`, `operations.py`,
`architect.py`, `train_search.py`) is not a dependency of dlsjax and cannot be
downloaded here, so this file re-states its search step for timing only,
following the facts in `shared/REFERENCE.md`: the canonical CIFAR search
network (C=16, 8 cells, 4 steps, multiplier 4, stem multiplier 3, 8 ops,
non-affine BN in every op, pooling followed by BN), one Adam alpha step on
the validation batch (first order: ``grad L_val(w, alpha)``; second order:
the unrolled virtual step with momentum and weight decay on a freshly
constructed model copy, and the finite-difference Hessian-vector product with
``R = 0.01 / ||v||``), then the SGD weight step with gradient clipping at 5.
Random inputs and labels, ``cudnn.benchmark = True`` as in the original.
PyTorch is not a dlsjax dependency: run this where PyTorch is installed.

One JSON line per order: ``name`` (``torch_darts_cifar_{first,second}_order``),
``images_per_s`` (weight-half images per step, as dlsjax counts them),
``step_s``, ``peak_mb`` (CUDA: max allocated; CPU: peak RSS), ``backend``.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRIMITIVES = (
  "none",
  "max_pool_3x3",
  "avg_pool_3x3",
  "skip_connect",
  "sep_conv_3x3",
  "sep_conv_5x5",
  "dil_conv_3x3",
  "dil_conv_5x5",
)


def relu_conv_bn(c_in, c_out, k, stride, pad):
  return nn.Sequential(
    nn.ReLU(),
    nn.Conv2d(c_in, c_out, k, stride, pad, bias=False),
    nn.BatchNorm2d(c_out, affine=False),
  )


def dil_conv(c_in, c_out, k, stride, pad, dil):
  return nn.Sequential(
    nn.ReLU(),
    nn.Conv2d(c_in, c_in, k, stride, pad, dilation=dil, groups=c_in, bias=False),
    nn.Conv2d(c_in, c_out, 1, bias=False),
    nn.BatchNorm2d(c_out, affine=False),
  )


def sep_conv(c_in, c_out, k, stride, pad):
  return nn.Sequential(dil_conv(c_in, c_in, k, stride, pad, 1), dil_conv(c_in, c_out, k, 1, pad, 1))


class Zero(nn.Module):
  def __init__(self, stride):
    super().__init__()
    self.stride = stride

  def forward(self, x):
    return x.mul(0.0) if self.stride == 1 else x[:, :, :: self.stride, :: self.stride].mul(0.0)


class FactorizedReduce(nn.Module):
  def __init__(self, c_in, c_out):
    super().__init__()
    self.c1 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
    self.c2 = nn.Conv2d(c_in, c_out // 2, 1, stride=2, bias=False)
    self.bn = nn.BatchNorm2d(c_out, affine=False)

  def forward(self, x):
    x = F.relu(x)
    return self.bn(torch.cat([self.c1(x), self.c2(x[:, :, 1:, 1:])], dim=1))


def make_op(name, c, stride):
  if name == "none":
    return Zero(stride)
  if name == "max_pool_3x3":
    return nn.Sequential(nn.MaxPool2d(3, stride, 1), nn.BatchNorm2d(c, affine=False))
  if name == "avg_pool_3x3":
    pool = nn.AvgPool2d(3, stride, 1, count_include_pad=False)
    return nn.Sequential(pool, nn.BatchNorm2d(c, affine=False))
  if name == "skip_connect":
    return nn.Identity() if stride == 1 else FactorizedReduce(c, c)
  k = 3 if name.endswith("3x3") else 5
  if name.startswith("sep"):
    return sep_conv(c, c, k, stride, k // 2)
  return dil_conv(c, c, k, stride, k - 1, 2)


class MixedOp(nn.Module):
  def __init__(self, c, stride):
    super().__init__()
    self.ops = nn.ModuleList(make_op(n, c, stride) for n in PRIMITIVES)

  def forward(self, x, weights):
    return sum(w * op(x) for w, op in zip(weights, self.ops, strict=True))


class Cell(nn.Module):
  def __init__(self, c_pp, c_p, c, reduction, reduction_prev, steps=4, multiplier=4):
    super().__init__()
    self.reduction, self.steps, self.multiplier = reduction, steps, multiplier
    self.pre0 = FactorizedReduce(c_pp, c) if reduction_prev else relu_conv_bn(c_pp, c, 1, 1, 0)
    self.pre1 = relu_conv_bn(c_p, c, 1, 1, 0)
    self.ops = nn.ModuleList(
      MixedOp(c, 2 if reduction and j < 2 else 1) for i in range(steps) for j in range(2 + i)
    )

  def forward(self, s0, s1, weights):
    states, offset = [self.pre0(s0), self.pre1(s1)], 0
    for _ in range(self.steps):
      s = sum(self.ops[offset + j](h, weights[offset + j]) for j, h in enumerate(states))
      offset += len(states)
      states.append(s)
    return torch.cat(states[-self.multiplier :], dim=1)


class Network(nn.Module):
  def __init__(self, c=16, num_classes=10, layers=8, steps=4, multiplier=4, stem_multiplier=3):
    super().__init__()
    self._args = (c, num_classes, layers, steps, multiplier, stem_multiplier)
    c_curr = stem_multiplier * c
    self.stem = nn.Sequential(
      nn.Conv2d(3, c_curr, 3, padding=1, bias=False), nn.BatchNorm2d(c_curr)
    )
    c_pp, c_p, c_curr = c_curr, c_curr, c
    self.cells, reduction_prev = nn.ModuleList(), False
    for i in range(layers):
      reduction = i in (layers // 3, 2 * layers // 3)
      if reduction:
        c_curr *= 2
      self.cells.append(Cell(c_pp, c_p, c_curr, reduction, reduction_prev, steps, multiplier))
      reduction_prev = reduction
      c_pp, c_p = c_p, multiplier * c_curr
    self.classifier = nn.Linear(c_p, num_classes)
    k = sum(2 + i for i in range(steps))
    self.alphas_normal = nn.Parameter(1e-3 * torch.randn(k, len(PRIMITIVES)))
    self.alphas_reduce = nn.Parameter(1e-3 * torch.randn(k, len(PRIMITIVES)))

  def arch_parameters(self):
    return [self.alphas_normal, self.alphas_reduce]

  def weights(self):
    return [p for n, p in self.named_parameters() if not n.startswith("alphas")]

  def forward(self, x):
    s0 = s1 = self.stem(x)
    for cell in self.cells:
      a = self.alphas_reduce if cell.reduction else self.alphas_normal
      s0, s1 = s1, cell(s0, s1, F.softmax(a, dim=-1))
    return self.classifier(F.adaptive_avg_pool2d(s1, 1).flatten(1))

  def loss(self, x, y):
    return F.cross_entropy(self(x), y)


class Architect:
  """The alpha step of the original `architect.py` (first order or unrolled second order)."""

  def __init__(self, model, momentum=0.9, weight_decay=3e-4):
    self.model, self.momentum, self.wd = model, momentum, weight_decay
    self.opt = torch.optim.Adam(
      model.arch_parameters(), lr=3e-4, betas=(0.5, 0.999), weight_decay=1e-3
    )

  def step(self, xt, yt, xv, yv, eta, w_opt, unrolled):
    self.opt.zero_grad()
    if unrolled:
      self._unrolled_backward(xt, yt, xv, yv, eta, w_opt)
    else:
      self.model.loss(xv, yv).backward()
    self.opt.step()

  def _unrolled_backward(self, xt, yt, xv, yv, eta, w_opt):
    model, weights = self.model, self.model.weights()
    grads = torch.autograd.grad(model.loss(xt, yt), weights)
    new = Network(*model._args).to(xt.device)  # the original builds a fresh copy every step
    new.load_state_dict(model.state_dict())
    with torch.no_grad():
      for p, q, g in zip(weights, new.weights(), grads, strict=True):
        buf = w_opt.state.get(p, {}).get("momentum_buffer")
        moment = self.momentum * buf if buf is not None else torch.zeros_like(p)
        q.copy_(p - eta * (moment + g + self.wd * p))
    new.loss(xv, yv).backward()
    dalpha = [a.grad for a in new.arch_parameters()]
    vector = [q.grad for q in new.weights()]
    r = 0.01 / torch.cat([v.flatten() for v in vector]).norm()
    with torch.no_grad():
      for p, v in zip(weights, vector, strict=True):
        p.add_(v, alpha=r)
    gp = torch.autograd.grad(model.loss(xt, yt), model.arch_parameters())
    with torch.no_grad():
      for p, v in zip(weights, vector, strict=True):
        p.sub_(v, alpha=2 * r)
    gn = torch.autograd.grad(model.loss(xt, yt), model.arch_parameters())
    with torch.no_grad():
      for p, v in zip(weights, vector, strict=True):
        p.add_(v, alpha=r)
    for a, d, x, y in zip(model.arch_parameters(), dalpha, gp, gn, strict=True):
      a.grad = d - eta * (x - y) / (2 * r)


def measure(order: str, steps: int, batch: int, device: str) -> dict:
  torch.manual_seed(0)
  torch.backends.cudnn.benchmark = True
  model = Network().to(device)
  w_opt = torch.optim.SGD(model.weights(), lr=0.025, momentum=0.9, weight_decay=3e-4)
  arch = Architect(model)

  def data():
    return torch.rand(batch, 3, 32, 32, device=device), torch.randint(
      0, 10, (batch,), device=device
    )

  (xt, yt), (xv, yv) = data(), data()

  def step():
    arch.step(xt, yt, xv, yv, 0.025, w_opt, unrolled=order == "second")
    w_opt.zero_grad()
    model.loss(xt, yt).backward()
    nn.utils.clip_grad_norm_(model.weights(), 5.0)
    w_opt.step()

  def sync():
    if device.startswith("cuda"):
      torch.cuda.synchronize()

  for _ in range(3):  # warm-up: cudnn autotuning, allocator
    step()
  sync()
  t0 = time.perf_counter()
  for _ in range(steps):
    step()
  sync()
  step_s = (time.perf_counter() - t0) / steps
  if device.startswith("cuda"):
    peak = torch.cuda.max_memory_allocated() / 2**20
    backend = f"cuda ({torch.cuda.get_device_name()})"
  else:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    backend = "cpu"
  return {
    "name": f"torch_darts_cifar_{order}_order",
    "images_per_s": round(batch / step_s, 3),
    "step_s": round(step_s, 4),
    "peak_mb": round(peak),
    "batch": batch,
    "steps": steps,
    "torch": torch.__version__,
    "backend": backend,
  }


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--order", choices=("first", "second", "both"), default="both")
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
  args = ap.parse_args(argv)
  for order in ("first", "second") if args.order == "both" else (args.order,):
    print(json.dumps(measure(order, args.steps, args.batch, args.device)), flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main())
