"""Candidate operations of the search space and the registry that names them.

An operation is a plain constructor ``build(C, stride, ctx) -> nn.Module``
registered under a name. The module maps ``x[B, H, W, C]`` to
``y[B, H/stride, W/stride, C]``. Cells and supernets look operations up by
name, so a researcher adds one from their own code::

    from dlsjax import ops

    @ops.register_op("my_conv_3x3")
    def my_conv_3x3(C, stride, ctx):
      return ops.ReLUConvBN(C, kernel=3, stride=stride, ctx=ctx)

and names it in ``config.op_set`` (a tuple of names; position = op index).
Operations see NHWC tensors unless registered with ``channel_major=True``:
then the supernet may call them on channel-major ``[C, N, H, W]`` tensors
(``ctx.layout == "CNHW"``), which every built-in operation supports.

Structure follows the original DARTS code (see ``shared/REFERENCE.md``):
ReLU -> conv -> BN, separable convs applied twice with the stride in the
first block only, dilated convs with dilation 2, ``skip_connect`` at stride 2
is a factorized reduce, average pooling excludes padding.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlsjax import layers
from dlsjax.layers import BatchNorm, OpContext

# --------------------------------------------------------------------------- #
# Registry
# --------------------------------------------------------------------------- #

OpBuilder = Callable[[int, int, OpContext], nn.Module]


@dataclasses.dataclass(frozen=True)
class OpDef:
  """A registered operation.

  Attributes:
    name: the name configs and genotypes use.
    build: ``(C, stride, ctx) -> nn.Module``.
    is_zero: the op always outputs zeros (``none``): it is never computed and
      never selected by a derivation.
    identity_at_stride1: the op is the identity at stride 1 (``skip_connect``);
      DropPath is not applied to identity ops, as in DARTS.
    channel_major: the module also accepts ``ctx.layout == "CNHW"`` inputs
      (``[C, N, H, W]``). A supernet whose op set has an op without it runs
      its DAGs in NHWC.
  """

  name: str
  build: OpBuilder
  is_zero: bool = False
  identity_at_stride1: bool = False
  channel_major: bool = False


_REGISTRY: dict[str, OpDef] = {}


def register_op(
  name: str,
  *,
  is_zero: bool = False,
  identity_at_stride1: bool = False,
  channel_major: bool = False,
  overwrite: bool = False,
):
  """Decorator registering ``build(C, stride, ctx) -> nn.Module`` under ``name``."""

  def decorator(build: OpBuilder) -> OpBuilder:
    if name in _REGISTRY and not overwrite:
      raise ValueError(f"operation {name!r} is already registered")
    _REGISTRY[name] = OpDef(name, build, is_zero, identity_at_stride1, channel_major)
    return build

  return decorator


def get_op(name: str) -> OpDef:
  try:
    return _REGISTRY[name]
  except KeyError:
    raise KeyError(f"unknown operation {name!r}; registered: {sorted(_REGISTRY)}") from None


def registered_ops() -> tuple[str, ...]:
  return tuple(sorted(_REGISTRY))


# --------------------------------------------------------------------------- #
# Building blocks
# --------------------------------------------------------------------------- #


class ReLUConvBN(nn.Module):
  """ReLU -> kxk conv (no bias) -> BN. Also the 1x1 cell preprocessing."""

  C_out: int
  kernel: int
  stride: int
  ctx: OpContext
  dilation: int = 1

  @nn.compact
  def __call__(self, x):
    layout = self.ctx.layout
    c_in = x.shape[layers.channel_axis(layout)]
    k = self.kernel
    x = jax.nn.relu(x)
    if k == 1:
      w = layers.param(self, "kernel", layers.conv_init(c_in), (c_in, self.C_out))
      x = layers.conv1x1(x, w, stride=self.stride, layout=layout)
    else:
      w = layers.param(self, "kernel", layers.conv_init(c_in * k * k), (k, k, c_in, self.C_out))
      x = layers.conv(x, w, stride=self.stride, dilation=self.dilation, layout=layout)
    return BatchNorm(self.ctx)(x)


class DilConv(nn.Module):
  """ReLU -> depthwise kxk (dilation d) -> 1x1 conv -> BN."""

  C_out: int
  kernel: int
  stride: int
  dilation: int
  ctx: OpContext

  @nn.compact
  def __call__(self, x):
    layout = self.ctx.layout
    c_in = x.shape[layers.channel_axis(layout)]
    k = self.kernel
    x = jax.nn.relu(x)
    dw = layers.param(self, "depthwise", layers.conv_init(k * k), (k, k, 1, c_in))
    x = layers.depthwise_conv(
      x,
      dw,
      stride=self.stride,
      dilation=self.dilation,
      impl=self.ctx.depthwise_impl,
      layout=layout,
    )
    pw = layers.param(self, "pointwise", layers.conv_init(c_in), (c_in, self.C_out))
    x = layers.conv1x1(x, pw, layout=layout)
    return BatchNorm(self.ctx)(x)


class SepConv(nn.Module):
  """Separable conv applied twice; the stride is used in the first block only."""

  C_out: int
  kernel: int
  stride: int
  ctx: OpContext

  @nn.compact
  def __call__(self, x):
    c_in = x.shape[layers.channel_axis(self.ctx.layout)]
    x = DilConv(c_in, self.kernel, self.stride, 1, self.ctx, name="block1")(x)
    return DilConv(self.C_out, self.kernel, 1, 1, self.ctx, name="block2")(x)


class FactorizedReduce(nn.Module):
  """ReLU, two 1x1 stride-2 convs (the second on the input shifted by one pixel), concat, BN."""

  C_out: int
  ctx: OpContext

  @nn.compact
  def __call__(self, x):
    if self.C_out % 2:
      raise ValueError(f"FactorizedReduce needs an even channel count, got {self.C_out}")
    layout = self.ctx.layout
    c_axis = layers.channel_axis(layout)
    c_in = x.shape[c_axis]
    half = self.C_out // 2
    x = jax.nn.relu(x)
    w1 = layers.param(self, "kernel1", layers.conv_init(c_in), (c_in, half))
    w2 = layers.param(self, "kernel2", layers.conv_init(c_in), (c_in, half))
    shifted = layers.spatial_slice(x, layout, 1)
    y = jnp.concatenate(
      [
        layers.conv1x1(x, w1, stride=2, layout=layout),
        layers.conv1x1(shifted, w2, stride=2, layout=layout),
      ],
      axis=c_axis,
    )
    return BatchNorm(self.ctx)(y)


class Pool(nn.Module):
  """3x3 max or average pooling, followed by BN in search networks."""

  kind: str
  stride: int
  ctx: OpContext

  @nn.compact
  def __call__(self, x):
    fn = layers.max_pool_3x3 if self.kind == "max" else layers.avg_pool_3x3
    y = fn(x, self.stride, layout=self.ctx.layout)
    return BatchNorm(self.ctx)(y) if self.ctx.pool_bn else y


class Identity(nn.Module):
  @nn.compact
  def __call__(self, x):
    return x


class Zero(nn.Module):
  stride: int
  layout: str = "NHWC"

  @nn.compact
  def __call__(self, x):
    return jnp.zeros_like(layers.spatial_slice(x, self.layout, 0, self.stride))


# --------------------------------------------------------------------------- #
# The built-in operations (Section III-B of the paper; DARTS names)
# --------------------------------------------------------------------------- #


@register_op("none", is_zero=True, channel_major=True)
def _none(C, stride, ctx):
  return Zero(stride, ctx.layout)


@register_op("max_pool_3x3", channel_major=True)
def _max_pool_3x3(C, stride, ctx):
  return Pool("max", stride, ctx)


@register_op("avg_pool_3x3", channel_major=True)
def _avg_pool_3x3(C, stride, ctx):
  return Pool("avg", stride, ctx)


@register_op("skip_connect", identity_at_stride1=True, channel_major=True)
def _skip_connect(C, stride, ctx):
  return Identity() if stride == 1 else FactorizedReduce(C, ctx)


@register_op("sep_conv_3x3", channel_major=True)
def _sep_conv_3x3(C, stride, ctx):
  return SepConv(C, 3, stride, ctx)


@register_op("sep_conv_5x5", channel_major=True)
def _sep_conv_5x5(C, stride, ctx):
  return SepConv(C, 5, stride, ctx)


@register_op("dil_conv_3x3", channel_major=True)
def _dil_conv_3x3(C, stride, ctx):
  return DilConv(C, 3, stride, 2, ctx)


@register_op("dil_conv_5x5", channel_major=True)
def _dil_conv_5x5(C, stride, ctx):
  return DilConv(C, 5, stride, 2, ctx)


@register_op("nor_conv_1x1", channel_major=True)
def _nor_conv_1x1(C, stride, ctx):
  return ReLUConvBN(C, 1, stride, ctx)


@register_op("nor_conv_3x3", channel_major=True)
def _nor_conv_3x3(C, stride, ctx):
  return ReLUConvBN(C, 3, stride, ctx)


@register_op("nor_conv_5x5", channel_major=True)
def _nor_conv_5x5(C, stride, ctx):
  return ReLUConvBN(C, 5, stride, ctx)


# --------------------------------------------------------------------------- #
# Named operation sets (index in the tuple = op index in alphas and genotypes)
# --------------------------------------------------------------------------- #

DARTS8 = (
    "none", "max_pool_3x3", "avg_pool_3x3", "skip_connect",
    "sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5",
)  # fmt: skip
# Table IV, row b: DARTS - {5x5 dil conv} + {1x1, 3x3 nor_conv}.
PAPER9 = (*DARTS8[:-1], "nor_conv_1x1", "nor_conv_3x3")
# Section III-B (default): DARTS + {3x3, 5x5 nor_conv}.
PAPER10 = (*DARTS8, "nor_conv_3x3", "nor_conv_5x5")

OP_SETS: dict[str, tuple[str, ...]] = {"darts8": DARTS8, "paper9": PAPER9, "paper10": PAPER10}


def resolve_op_set(op_set: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
  """A named op set or an explicit tuple of registered names, validated."""
  if isinstance(op_set, str):
    if op_set not in OP_SETS:
      raise KeyError(f"unknown op set {op_set!r}; named sets: {sorted(OP_SETS)}")
    names = OP_SETS[op_set]
  else:
    names = tuple(op_set)
  for n in names:
    get_op(n)
  if len(set(names)) != len(names):
    raise ValueError(f"op set has duplicate names: {names}")
  if all(get_op(n).is_zero for n in names):
    raise ValueError(f"op set {names} has no non-zero operation")
  return names
