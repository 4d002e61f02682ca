"""EfficientNet-B0 (Tan & Le 2019) with a 9-channel input.

The B0 block table, squeeze-and-excitation (0.25 of the block input), swish,
drop connect ``0.2 * block / blocks`` and dropout 0.2 before the classifier
(as the reference implementation). ``width``/``depth`` are the compound
scaling coefficients (B0: 1.0 / 1.0); ``input_size`` 224 is B0's resolution
(the paper's 0.38 GFLOPs). Batch-norm momentum and epsilon follow PyTorch.
"""

from __future__ import annotations

import dataclasses
import math

import flax.linen as nn
import jax.numpy as jnp

from dlsjax import layers
from dlsjax.baselines.common import batch_norm, concat_modalities, drop_path

# (expansion, kernel, stride, output channels, repeats)
B0_BLOCKS = (
  (1, 3, 1, 16, 1),
  (6, 3, 2, 24, 2),
  (6, 5, 2, 40, 2),
  (6, 3, 2, 80, 3),
  (6, 5, 1, 112, 3),
  (6, 5, 2, 192, 4),
  (6, 3, 1, 320, 1),
)


@dataclasses.dataclass(frozen=True)
class EfficientNetConfig:
  width: float = 1.0
  depth: float = 1.0
  dropout: float = 0.2
  drop_connect: float = 0.2
  input_size: int = 224  # 0: the data's resolution
  stem_stride: int = 2  # 1 keeps small inputs at their resolution for one more stage
  # A Flax/orbax checkpoint of this module's variables (e.g. ImageNet B0): every leaf
  # but the stem conv and the classifier is loaded (baselines.pretrained).
  pretrained: str = ""
  depthwise_impl: str = "auto"  # layers.depthwise_conv (auto: toeplitz on CPU, native elsewhere)


def round_channels(c: float, width: float, divisor: int = 8) -> int:
  c *= width
  out = max(divisor, int(c + divisor / 2) // divisor * divisor)
  return int(out + divisor) if out < 0.9 * c else int(out)


class DepthwiseConv(nn.Module):
  """``nn.Conv(C, feature_group_count=C)``'s parameters (``kernel [k, k, 1, C]``), computed by
  :func:`dlsjax.layers.depthwise_conv` (XLA's grouped convolution is slow on CPU)."""

  kernel_size: int
  stride: int
  impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    k = self.kernel_size
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]))
    return layers.depthwise_conv(x, kernel.astype(x.dtype), stride=self.stride, impl=self.impl)


class MBConv(nn.Module):
  expand: int
  kernel: int
  stride: int
  features: int
  drop_rate: float
  train: bool
  axis_name: str | None
  depthwise_impl: str = "auto"

  @nn.compact
  def __call__(self, x):
    bn = batch_norm(self.train, self.axis_name)
    c_in = x.shape[-1]
    y = x
    if self.expand != 1:
      y = nn.Conv(c_in * self.expand, (1, 1), use_bias=False, name="expand_conv")(y)
      y = nn.swish(bn(name="expand_bn")(y))
    c = y.shape[-1]
    k = self.kernel
    y = DepthwiseConv(k, self.stride, self.depthwise_impl, name="dw_conv")(y)
    y = nn.swish(bn(name="dw_bn")(y))
    se = jnp.mean(y, axis=(1, 2), keepdims=True)
    se = nn.swish(nn.Conv(max(1, c_in // 4), (1, 1), name="se_reduce")(se))
    y = y * nn.sigmoid(nn.Conv(c, (1, 1), name="se_expand")(se))
    y = bn(name="project_bn")(nn.Conv(self.features, (1, 1), use_bias=False, name="project")(y))
    if self.stride == 1 and c_in == self.features:
      y = x + drop_path(self, y, self.drop_rate, self.train)
    return y


class EfficientNet(nn.Module):
  spec: object
  cfg: EfficientNetConfig = EfficientNetConfig()
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images, *, train: bool, drop_prob=0.0):
    del drop_prob  # drop connect has its own fixed schedule over the blocks
    cfg = self.cfg
    bn = batch_norm(train, self.bn_axis_name)
    x = concat_modalities(self.spec, images, cfg.input_size)
    s = cfg.stem_stride
    x = nn.Conv(round_channels(32, cfg.width), (3, 3), s, padding=1, use_bias=False,
                name="stem_conv")(x)  # fmt: skip
    x = nn.swish(bn(name="stem_bn")(x))
    repeats = [int(math.ceil(r * cfg.depth)) for *_, r in B0_BLOCKS]
    total, i = sum(repeats), 0
    for stage, ((e, k, stride, c, _), n) in enumerate(zip(B0_BLOCKS, repeats, strict=True)):
      for b in range(n):
        x = MBConv(
          e, k, stride if b == 0 else 1, round_channels(c, cfg.width),
          cfg.drop_connect * i / total, train, self.bn_axis_name, cfg.depthwise_impl,
          name=f"s{stage}b{b}",
        )(x)  # fmt: skip
        i += 1
    x = nn.Conv(round_channels(1280, cfg.width), (1, 1), use_bias=False, name="head_conv")(x)
    x = nn.swish(bn(name="head_bn")(x))
    x = self.perturb("features", x)
    self.sow("intermediates", "features", x)
    x = jnp.mean(x, axis=(1, 2))
    x = nn.Dropout(cfg.dropout, deterministic=not train or not self.has_rng("dropout"))(x)
    return nn.Dense(self.spec.num_classes, name="head")(x)
