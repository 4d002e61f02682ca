"""ResNet-18 (He et al. 2016), torchvision's layout, with a 9-channel input.

``stem="imagenet"``: 7x7/2 conv + 3x3/2 max pool (the paper's row: 224 x 224
input, 11.2 M parameters, ~2 GFLOPs); ``stem="cifar"``: one 3x3/1 conv and no
pooling, for small inputs at their own resolution.
"""

from __future__ import annotations

import dataclasses

import flax.linen as nn

from dlsjax.baselines.common import batch_norm, concat_modalities, conv, head


@dataclasses.dataclass(frozen=True)
class ResNetConfig:
  stage_blocks: tuple[int, ...] = (2, 2, 2, 2)
  width: int = 64
  stem: str = "imagenet"  # imagenet | cifar
  input_size: int = 224  # 0: the data's resolution


class BasicBlock(nn.Module):
  features: int
  stride: int
  train: bool
  axis_name: str | None

  @nn.compact
  def __call__(self, x):
    bn = batch_norm(self.train, self.axis_name)
    y = nn.relu(bn(name="bn1")(conv(self.features, 3, self.stride, "conv1")(x)))
    y = bn(name="bn2", scale_init=nn.initializers.ones)(conv(self.features, 3, 1, "conv2")(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = bn(name="down_bn")(conv(self.features, 1, self.stride, "down_conv")(x))
    return nn.relu(x + y)


class ResNet(nn.Module):
  spec: object  # NetworkSpec: modalities, num_classes, resolution
  cfg: ResNetConfig = ResNetConfig()
  bn_axis_name: str | None = None

  @nn.compact
  def __call__(self, images, *, train: bool, drop_prob=0.0):
    del drop_prob  # no DropPath in ResNet
    cfg = self.cfg
    if cfg.stem not in ("imagenet", "cifar"):
      raise ValueError(f"resnet stem must be 'imagenet' or 'cifar', got {cfg.stem!r}")
    x = concat_modalities(self.spec, images, cfg.input_size)
    bn = batch_norm(train, self.bn_axis_name)
    if cfg.stem == "imagenet":
      x = nn.Conv(cfg.width, (7, 7), 2, padding=3, use_bias=False, name="stem_conv")(x)
      x = nn.relu(bn(name="stem_bn")(x))
      x = nn.max_pool(x, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    else:
      x = nn.Conv(cfg.width, (3, 3), 1, padding=1, use_bias=False, name="stem_conv")(x)
      x = nn.relu(bn(name="stem_bn")(x))
    for s, n in enumerate(cfg.stage_blocks):
      for b in range(n):
        stride = 2 if s > 0 and b == 0 else 1
        x = BasicBlock(cfg.width * 2**s, stride, train, self.bn_axis_name, name=f"s{s}b{b}")(x)
    return head(self, x, self.spec.num_classes)
