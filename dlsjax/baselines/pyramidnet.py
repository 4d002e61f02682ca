"""PyramidNet with ShakeDrop (Han et al. 2017; Yamada et al. 2019), the CIFAR variant.

Bottleneck blocks in three stages of ``(depth - 2) // 9`` (basic blocks:
``// 6``); the width grows by ``alpha / blocks`` at every block (the "pyramid");
shortcuts are identity, with 2x2 average pooling when the block halves the
size and zero channels appended for the wider output. ShakeDrop multiplies the
residual branch by ``b + alpha - b * alpha`` in the forward pass and
``b + beta - b * beta`` in the backward pass (``b ~ Bernoulli(1 - p_l)`` per
batch, ``alpha ~ U[-1, 1]``, ``beta ~ U[0, 1]`` per example), ``p_l`` rising
linearly to ``p_final`` = 0.5 at the last block; at test time the branch is
scaled by ``1 - p_l``. PyramidNet-272 (alpha 200) + ShakeDrop is the CIFAR
state of the art the paper compares with (~26 M parameters at 10 classes).
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlsjax.baselines.common import batch_norm, concat_modalities, conv, head


@dataclasses.dataclass(frozen=True)
class PyramidNetConfig:
  depth: int = 272
  alpha: float = 200.0
  bottleneck: bool = True
  p_final: float = 0.5  # ShakeDrop probability of the last block
  input_size: int = 0  # 0: the data's resolution (CIFAR variant on 64 x 64, as the paper's FLOPs)

  @property
  def blocks_per_stage(self) -> int:
    per = 9 if self.bottleneck else 6
    if (self.depth - 2) % per:
      raise ValueError(f"PyramidNet depth {self.depth}: depth - 2 must be a multiple of {per}")
    return (self.depth - 2) // per


def shake_drop(x, rng, p: float, train: bool):
  """ShakeDrop of a residual branch ``x`` (``rng`` None: the expectation, as at test time)."""
  if not train or rng is None:
    return x * (1 - p)
  k_gate, k_alpha, k_beta = jax.random.split(rng, 3)
  b = jax.random.bernoulli(k_gate, 1 - p).astype(x.dtype)
  shape = (x.shape[0], 1, 1, 1)
  alpha = jax.random.uniform(k_alpha, shape, x.dtype, -1.0, 1.0)
  beta = jax.random.uniform(k_beta, shape, x.dtype, 0.0, 1.0)
  forward = b + alpha - b * alpha
  backward = b + beta - b * beta
  # Value: x * forward; gradient: through x * backward only.
  return x * backward + jax.lax.stop_gradient(x * (forward - backward))


class PyramidBlock(nn.Module):
  planes: int
  stride: int
  bottleneck: bool
  p_drop: float
  train: bool
  axis_name: str | None

  @nn.compact
  def __call__(self, x):
    bn = batch_norm(self.train, self.axis_name)
    y = bn(name="bn1")(x)
    if self.bottleneck:
      y = nn.relu(bn(name="bn2")(conv(self.planes, 1, 1, "conv1")(y)))
      y = nn.relu(bn(name="bn3")(conv(self.planes, 3, self.stride, "conv2")(y)))
      y = bn(name="bn4")(conv(self.planes * 4, 1, 1, "conv3")(y))
    else:
      y = nn.relu(bn(name="bn2")(conv(self.planes, 3, self.stride, "conv1")(y)))
      y = bn(name="bn3")(conv(self.planes, 3, 1, "conv2")(y))
    rng = self.make_rng("dropout") if self.train and self.has_rng("dropout") else None
    y = shake_drop(y, rng, self.p_drop, self.train)
    short = x
    if self.stride != 1:
      short = nn.avg_pool(short, (2, 2), (2, 2))
    pad = y.shape[-1] - short.shape[-1]
    if pad > 0:
      short = jnp.pad(short, ((0, 0), (0, 0), (0, 0), (0, pad)))
    return y + short


class PyramidNet(nn.Module):
  spec: object
  cfg: PyramidNetConfig = PyramidNetConfig()
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images, *, train: bool, drop_prob=0.0):
    del drop_prob  # ShakeDrop is its regulariser
    cfg = self.cfg
    n = cfg.blocks_per_stage
    total = 3 * n
    add = cfg.alpha / total
    bn = batch_norm(train, self.bn_axis_name)
    x = concat_modalities(self.spec, images, cfg.input_size)
    x = bn(name="stem_bn")(nn.Conv(16, (3, 3), 1, padding=1, use_bias=False, name="stem_conv")(x))
    width, i = 16.0, 0
    for stage in range(3):
      for b in range(n):
        width += add
        i += 1
        x = PyramidBlock(
          int(round(width)), 2 if stage > 0 and b == 0 else 1, cfg.bottleneck,
          cfg.p_final * i / total, train, self.bn_axis_name, name=f"s{stage}b{b}",
        )(x)  # fmt: skip
    x = nn.relu(bn(name="final_bn")(x))
    return head(self, x, self.spec.num_classes)
