"""What the baseline CNNs share: the 9-channel input, BatchNorm, the Grad-CAM hook."""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlsjax.netspec import modality_images


def concat_modalities(spec, images, input_size: int = 0):
  """The modalities concatenated on channels in ``spec`` order (paper: WL, NIR-I, NIR-II = 9).

  ``input_size`` > 0 resizes bilinearly to ``input_size`` x ``input_size`` first
  (the "natural" resolution of an ImageNet CNN; the paper's FLOPs of ResNet-18
  and EfficientNet-B0 are those of 224 x 224 inputs).
  """
  x = jnp.concatenate(modality_images(spec, images), axis=-1)
  if input_size and input_size != x.shape[1]:
    b, _, _, c = x.shape
    x = jax.image.resize(x, (b, input_size, input_size, c), "bilinear")
  return x


def batch_norm(train: bool, axis_name: str | None, **kw):
  """PyTorch's BatchNorm2d defaults (momentum 0.1 = Flax 0.9, eps 1e-5), synced over an axis."""
  return functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    axis_name=axis_name if train else None,
    **kw,
  )


def conv(features: int, kernel: int, stride: int, name: str) -> nn.Conv:
  """A bias-free ``kernel`` x ``kernel`` convolution with "same" padding (PyTorch's layout)."""
  return nn.Conv(features, (kernel, kernel), stride, padding=kernel // 2, use_bias=False, name=name)


def head(module: nn.Module, x, num_classes: int):
  """Grad-CAM hook on the last feature map, global average pool, linear classifier."""
  x = module.perturb("features", x)
  module.sow("intermediates", "features", x)
  return nn.Dense(num_classes, name="head")(jnp.mean(x, axis=(1, 2)))


def drop_path(module: nn.Module, x, rate: float, train: bool):
  """Stochastic depth per example (EfficientNet's drop connect); identity in eval."""
  if not train or rate <= 0 or not module.has_rng("dropout"):
    return x
  keep = jax.random.bernoulli(module.make_rng("dropout"), 1 - rate, (x.shape[0], 1, 1, 1))
  return jnp.where(keep, x / (1 - rate), 0).astype(x.dtype)
