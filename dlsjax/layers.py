"""Convolution, pooling and BatchNorm primitives shared by every operation.

Tensors are NHWC, or channel-major ``[C, N, H, W]`` (layout ``"CNHW"``)
where a primitive takes ``layout``: the supernet runs its DAGs channel-major
on CPU, where the depthwise convolution is a batched matmul over channels and
NHWC would cost two transposes per convolution (``NetworkSpec.dag_layout``).
The primitives are written so that `jax.vmap` over a
stack of edges (parameters batched, input shared) lowers to *one* large,
dense XLA op instead of many small ones:

* a 1x1 convolution is an einsum, so a vmap over edges is a batched matmul;
* a kxk convolution with a batched kernel and a shared input becomes one
  convolution with ``edges * C_out`` output channels (JAX's batching rule);
* a depthwise convolution is chosen per backend behind :func:`depthwise_conv`;
  on CPU it is a batched matmul with banded (Toeplitz) matrices, so vmap over
  edges adds a batch dimension to a dot instead of producing a grouped conv.
"""

from __future__ import annotations

import dataclasses
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.ad_checkpoint import checkpoint_name

DEPTHWISE_IMPLS = ("auto", "xla", "toeplitz")
LAYOUTS = ("NHWC", "CNHW")


def channel_axis(layout: str) -> int:
  """Position of the channel axis: last in NHWC, first in channel-major CNHW."""
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  return -1 if layout == "NHWC" else 0


def spatial_slice(x, layout: str, start: int = 0, step: int = 1):
  """``x[..., start::step, start::step, ...]`` over the two spatial axes of ``layout``."""
  sl = slice(start, None, step)
  if layout == "NHWC":
    return x[:, sl, sl, :]
  return x[:, :, sl, sl]


def to_layout(x, src: str, dst: str):
  """Transpose a 4-D tensor between NHWC and CNHW."""
  if src == dst:
    return x
  return jnp.transpose(x, (3, 0, 1, 2) if dst == "CNHW" else (1, 2, 3, 0))


@dataclasses.dataclass(frozen=True)
class OpContext:
  """What every operation needs to know besides its channel count and stride.

  Attributes:
    train: BatchNorm uses batch statistics (and updates running ones when the
      ``batch_stats`` collection is mutable).
    affine: BatchNorm has a learnable scale and bias. The search network of
      DARTS (and of dlsjax) is non-affine; derived networks are affine.
    pool_bn: pooling ops are followed by a (non-affine) BatchNorm, as in the
      DARTS search network. Derived networks have no BN after pooling.
    depthwise_impl: see :func:`depthwise_conv`.
    bn_momentum: Flax convention (0.9 == PyTorch's 0.1).
    bn_eps: BatchNorm epsilon.
    bn_axis_name: when set, batch statistics are averaged over this named
      axis (data parallel BatchNorm under pmap / shard_map).
    layout: ``NHWC`` or channel-major ``CNHW``; the built-in operations
      support both (``ops.OpDef.channel_major``), parameters are the same.
  """

  train: bool = True
  affine: bool = False
  pool_bn: bool = True
  depthwise_impl: str = "auto"
  bn_momentum: float = 0.9
  bn_eps: float = 1e-5
  bn_axis_name: str | None = None
  layout: str = "NHWC"


class BatchNorm(nn.Module):
  """BatchNorm over N, H, W with optional affine transform.

  In training mode the batch statistics normalise the input; running
  statistics are updated only when the ``batch_stats`` collection is mutable,
  so ``apply(..., train=True)`` without ``mutable`` is "training-mode BN, no
  update" (what the PT / MPDS derivation uses).
  """

  ctx: OpContext

  @nn.compact
  def __call__(self, x):
    ctx = self.ctx
    c_axis = channel_axis(ctx.layout)
    c = x.shape[c_axis]
    axes = (0, 1, 2) if c_axis == -1 else (1, 2, 3)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (c,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (c,), jnp.float32)
    if ctx.train:  # statistics in at least float32 whatever the compute dtype (dlsjax.precision)
      xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
      mean = jnp.mean(xf, axis=axes)
      mean_sq = jnp.mean(jnp.square(xf), axis=axes)
      if ctx.bn_axis_name is not None:
        mean, mean_sq = lax.pmean((mean, mean_sq), ctx.bn_axis_name)
      var = jnp.maximum(mean_sq - jnp.square(mean), 0.0)
      if self.is_mutable_collection("batch_stats") and not self.is_initializing():
        m = ctx.bn_momentum
        ra_mean.value = m * ra_mean.value + (1.0 - m) * mean
        ra_var.value = m * ra_var.value + (1.0 - m) * var
    else:
      mean, var = ra_mean.value, ra_var.value
    shape = (c,) if c_axis == -1 else (c, 1, 1, 1)
    inv = lax.rsqrt(var + ctx.bn_eps)
    mean, inv = mean.astype(x.dtype), inv.astype(x.dtype)
    y = (x - mean.reshape(shape)) * inv.reshape(shape)
    if ctx.affine:
      scale = param(self, "scale", nn.initializers.ones, (c,), jnp.float32)
      bias = param(self, "bias", nn.initializers.zeros, (c,), jnp.float32)
      y = y * scale.astype(x.dtype).reshape(shape) + bias.astype(x.dtype).reshape(shape)
    return y


def apply_with_stats(module: nn.Module, params, stats, *args, rngs=None):
  """``(output, new batch_stats)`` of an unbound ``module`` on explicit variables.

  For modules applied inside a ``lax.scan`` or ``vmap`` over stacked
  variables (the supernet's DAG ops, the shared cell bodies).
  """
  y, upd = module.apply(
    {"params": params, "batch_stats": stats}, *args, mutable=["batch_stats"], rngs=rngs
  )
  return y, upd.get("batch_stats", {})


def _same_padding(kernel: int, dilation: int) -> int:
  return dilation * (kernel - 1) // 2


def conv(
  x,
  kernel_HWIO,
  *,
  stride: int = 1,
  dilation: int = 1,
  padding: int | None = None,
  feature_group_count: int = 1,
  layout: str = "NHWC",
):
  """A plain XLA convolution with symmetric padding (default: 'same' for odd kernels).

  A channel-major (``CNHW``) input is convolved in NHWC between two
  transposes. Inside a ``lax.scan`` body (the supernet DAG) XLA's CPU backend
  emits a ``CNHW`` convolution as a generic loop nest instead of its fast
  convolution kernel, several times slower than NHWC with the transposes.
  """
  channel_axis(layout)
  if layout == "CNHW":
    y = conv(
      to_layout(x, "CNHW", "NHWC"),
      kernel_HWIO,
      stride=stride,
      dilation=dilation,
      padding=padding,
      feature_group_count=feature_group_count,
    )
    return to_layout(y, "NHWC", "CNHW")
  k = kernel_HWIO.shape[0]
  p = _same_padding(k, dilation) if padding is None else padding
  pads = ((p, p), (p, p))
  if p and dilation * (k - 1) + 1 > min(x.shape[1:3]):
    # A kernel wider than the image (5x5 at 4x4): XLA's CPU backend rewrites
    # the padded convolution into a much slower form inside a scan; padding
    # first and a VALID convolution avoids that (same values).
    x = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
    pads = ((0, 0), (0, 0))
  return lax.conv_general_dilated(
    x,
    kernel_HWIO,
    window_strides=(stride, stride),
    padding=pads,
    rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
    feature_group_count=feature_group_count,
  )


def conv1x1(x, kernel_IO, *, stride: int = 1, layout: str = "NHWC"):
  """1x1 convolution as an einsum (vmap over edges gives one batched matmul)."""
  if stride > 1:
    x = spatial_slice(x, layout, 0, stride)
  if channel_axis(layout) == -1:
    return jnp.einsum("bhwc,cd->bhwd", x, kernel_IO)
  return jnp.einsum("cd,cbhw->dbhw", kernel_IO, x)


def resolve_depthwise_impl(impl: str) -> str:
  """Choose the depthwise formulation for the current backend.

  Measured on a 2-core x86 CPU (``benchmarks/depthwise_variants.py``, see
  benchmarks/RESULTS.md): XLA's CPU depthwise convolution is 4-17x slower
  than ``toeplitz`` (a batched matmul) in every case the supernet has:
  unbatched, a kernel batched over edges with a shared input, and input and
  kernel both batched (the second block of a separable conv). GPUs/TPUs have fast native depthwise
  kernels, so ``auto`` picks ``xla`` there.
  """
  if impl not in DEPTHWISE_IMPLS:
    raise ValueError(f"depthwise_impl must be one of {DEPTHWISE_IMPLS}, got {impl!r}")
  if impl != "auto":
    return impl
  return "toeplitz" if jax.default_backend() == "cpu" else "xla"


def _out_size(size: int, kernel: int, stride: int, dilation: int, pad: int) -> int:
  return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _column_taps(kernel: int, width: int, stride: int, dilation: int, pad: int) -> np.ndarray:
  """0/1 array ``S[j, w, v]``: output column ``v`` reads input column ``w`` with tap ``j``.

  Columns that fall into the zero padding have no entry, which is what
  zero padding contributes.
  """
  out = _out_size(width, kernel, stride, dilation, pad)
  taps = np.zeros((kernel, width, out), np.float32)
  for j in range(kernel):
    for v in range(out):
      w = v * stride + j * dilation - pad
      if 0 <= w < width:
        taps[j, w, v] = 1.0
  return taps


@functools.partial(jax.checkpoint, static_argnums=(2, 3, 4))
def _depthwise_toeplitz(x, kernel_HW1C, stride: int, dilation: int, layout: str):
  return depthwise_toeplitz_raw(x, kernel_HW1C, stride=stride, dilation=dilation, layout=layout)


def depthwise_toeplitz(x, kernel_HW1C, *, stride: int = 1, dilation: int = 1, layout: str = "NHWC"):
  """:func:`depthwise_toeplitz_raw` under ``jax.checkpoint``.

  The stacked row slices are ``k`` times the input; saved for the backward
  pass they dominated a search step's memory. Rematerialised, only the input
  and kernel are kept (the slices are cheap to redo).
  """
  return _depthwise_toeplitz(x, kernel_HW1C, stride, dilation, layout)


def depthwise_toeplitz_raw(
  x, kernel_HW1C, *, stride: int = 1, dilation: int = 1, layout: str = "NHWC"
):
  """Depthwise conv as one batched matmul over channels (no convolution op).

  Rows are handled by ``k`` strided slices of the row-padded input, columns
  by a banded ``(k*W, W_out)`` matrix per channel built from the kernel with
  a constant 0/1 tap array, so

      y[c] = rows(x)[c] @ T[c],  rows: (C, B*H_out, k*W), T: (C, k*W, W_out).

  That costs ``W/k`` times the MACs of a direct depthwise conv but runs as a
  dense dot, which XLA's CPU backend executes far faster than its grouped
  convolution; under ``vmap`` over edges the edge axis simply joins the dot's
  batch (or free) dimensions. The matmul is channel-major: an NHWC input is
  transposed there and back, a ``CNHW`` one is used as it is.
  """
  xc = to_layout(x, layout, "CNHW")
  c, b, h, w = xc.shape
  k = kernel_HW1C.shape[0]
  pad = _same_padding(k, dilation)
  h_out = _out_size(h, k, stride, dilation, pad)
  taps = _column_taps(k, w, stride, dilation, pad)
  xc = jnp.pad(xc, ((0, 0), (0, 0), (pad, pad), (0, 0)))
  span = stride * (h_out - 1) + 1
  rows = jnp.stack(
    [xc[:, :, i * dilation : i * dilation + span : stride] for i in range(k)], axis=3
  ).reshape(c, b * h_out, k * w)
  banded = jnp.einsum(
    "ijc,jwv->ciwv", kernel_HW1C[:, :, 0, :], taps.astype(kernel_HW1C.dtype)
  ).reshape(c, k * w, -1)
  y = lax.dot_general(rows, banded, (((2,), (1,)), ((0,), (0,))))
  return to_layout(y.reshape(c, b, h_out, -1), "CNHW", layout)


def depthwise_conv(
  x,
  kernel_HW1C,
  *,
  stride: int = 1,
  dilation: int = 1,
  impl: str = "auto",
  layout: str = "NHWC",
):
  """Depthwise kxk convolution; both implementations give the same output.

  * ``xla``: ``feature_group_count = C`` (native depthwise), the accelerators' default.
  * ``toeplitz``: :func:`depthwise_toeplitz`, the CPU default.

  (A dense convolution with a block-diagonal kernel lost on CPU; it is the
  reference of ``tests/ops_test.py`` and ``benchmarks/depthwise_variants.py``.)
  """
  c = x.shape[channel_axis(layout)]
  impl = resolve_depthwise_impl(impl)
  kw = dict(stride=stride, dilation=dilation, layout=layout)
  if impl == "xla":
    return conv(x, kernel_HW1C, feature_group_count=c, **kw)
  return depthwise_toeplitz(x, kernel_HW1C, **kw)


def _height_axis(layout: str) -> int:
  """The first of the two spatial axes (height, then width) of a 4-D tensor in ``layout``."""
  return 1 if channel_axis(layout) == -1 else 2


def _pool_window(stride: int, layout: str):
  """(window, strides, padding) of a 3x3 pooling with padding 1 in ``layout``."""
  if channel_axis(layout) == -1:
    return (1, 3, 3, 1), (1, stride, stride, 1), ((0, 0), (1, 1), (1, 1), (0, 0))
  return (1, 1, 3, 3), (1, 1, stride, stride), ((0, 0), (0, 0), (1, 1), (1, 1))


def max_pool_3x3(x, stride: int, layout: str = "NHWC"):
  """3x3 max pooling, padding 1 (-inf), with the derivative of :func:`_max_pool_jvp`."""
  return _max_pool(x, stride, layout)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def _max_pool(x, stride: int, layout: str):
  window, strides, pad = _pool_window(stride, layout)
  return lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pad)


def _pool_taps(x, stride: int, layout: str, fill: float):
  """The nine strided 3x3 window taps of ``x`` padded by 1 with ``fill``, row-major."""
  h_axis = _height_axis(layout)
  pads = [(0, 0, 0)] * x.ndim
  pads[h_axis] = pads[h_axis + 1] = (1, 1, 0)
  xp = lax.pad(x, jnp.asarray(fill, x.dtype), pads)
  h, w = x.shape[h_axis], x.shape[h_axis + 1]
  ho, wo = _out_size(h, 3, stride, 1, 1), _out_size(w, 3, stride, 1, 1)
  taps = []
  for i in range(3):
    for j in range(3):
      start = [0] * x.ndim
      limit = list(xp.shape)
      step = [1] * x.ndim
      start[h_axis], start[h_axis + 1] = i, j
      limit[h_axis] = i + stride * (ho - 1) + 1
      limit[h_axis + 1] = j + stride * (wo - 1) + 1
      step[h_axis] = step[h_axis + 1] = stride
      taps.append(lax.slice(xp, start, limit, step))
  return taps


MAX_POOL_TAP = "max_pool_tap"


def max_pool_tap(x, stride: int, layout: str):
  """``int8``: the row-major index (0-8) of the first maximum of each 3x3 window.

  Named :data:`MAX_POOL_TAP` (``jax.ad_checkpoint.checkpoint_name``) so that a
  ``jax.checkpoint`` policy can keep it for the backward pass (the supernet's
  DAG does, ``cells.MixedDAG``).
  """
  best = idx = None
  for k, xt in enumerate(_pool_taps(x, stride, layout, -jnp.inf)):
    if best is None:
      best, idx = xt, jnp.zeros(xt.shape, jnp.int8)
      continue
    better = xt > best
    idx = jnp.where(better, jnp.int8(k), idx)
    best = jnp.maximum(best, xt)
  return checkpoint_name(idx, MAX_POOL_TAP)


@_max_pool.defjvp
def _max_pool_jvp(stride, layout, primals, tangents):
  """The tangent of the first maximum of each window (row-major order).

  Written with nine strided slices and selects on the window's first-maximum
  index (:func:`max_pool_tap`), so its transpose (the gradient) is nine pads
  that XLA fuses into one loop; the derivative XLA derives for
  ``reduce_window`` (a variadic arg-max window, then a scatter) is many
  times the forward's cost on CPU. The index is computed once and kept as an
  ``int8`` tensor: recomputed inside the gradient's loop from the window's
  values (a chain of compares per tap) it made max pooling the slowest op
  of a cell (benchmarks/RESULTS.md). Plain JAX: forward-over-reverse works too.
  """
  (x,), (dx,) = primals, tangents
  y = _max_pool(x, stride, layout)
  idx = max_pool_tap(x, stride, layout)
  dy = None
  for k, dxt in enumerate(_pool_taps(dx, stride, layout, 0.0)):
    dy = dxt if dy is None else jnp.where(idx == k, dxt, dy)
  return y, dy


def avg_pool_3x3(x, stride: int, layout: str = "NHWC"):
  """3x3 average pooling, padding 1, padded cells excluded from the count."""
  window, strides, pad = _pool_window(stride, layout)
  total = lax.reduce_window(x, 0.0, lax.add, window, strides, pad)
  h_axis = _height_axis(layout)
  ones_shape = [1] * x.ndim
  ones_shape[h_axis : h_axis + 2] = x.shape[h_axis : h_axis + 2]
  ones = jnp.ones(ones_shape, x.dtype)
  count = lax.reduce_window(ones, 0.0, lax.add, window, strides, pad)
  return total / count


def init_key(rng):
  """The key that initialises parameters, from an ordinary (threefry) key.

  ``unsafe_rbg``: parameter values come from XLA's RngBitGenerator instead
  of threefry, whose 20 rounds XLA unrolls into the graph once per parameter
  tensor, which roughly doubles the compile time of a network's jitted
  ``init`` (benchmarks/RESULTS.md). Deterministic for a given seed and backend;
  the values differ from threefry's (and may differ across backends), like
  any change of PRNG. Typed keys pass through unchanged (the library passes
  the raw data of its own keys: ``dlsjax.rng.raw``).
  """
  if jax.dtypes.issubdtype(rng.dtype, jax.dtypes.prng_key):
    return rng
  data = jnp.asarray(rng, jnp.uint32).reshape(-1)
  data = jnp.concatenate([data, data ^ jnp.uint32(0x9E3779B9)])[:4]
  return jax.random.wrap_key_data(data, impl="unsafe_rbg")


def param(module: nn.Module, name: str, init_fn, shape: tuple[int, ...], *args):
  """``module.param(name, init_fn, shape, *args)`` without re-running ``init_fn`` on apply.

  Flax's ``param`` checks an existing parameter by tracing ``init_fn`` again
  (``jax.eval_shape``) every time a module is applied; over the thousands of
  kernels of a supernet that was a large share of the trace time of every
  step. The shape is checked directly instead.
  """
  if module.has_variable("params", name):
    value = module.get_variable("params", name)
    if tuple(np.shape(value)) != tuple(shape):
      path = "/".join(module.scope.path)
      raise ValueError(
        f"parameter {path}/{name} has shape {tuple(np.shape(value))}, the module expects "
        f"{tuple(shape)}"
      )
    return value
  return module.param(name, init_fn, shape, *args)


def conv_init(fan_in: int):
  """PyTorch's default conv initialisation (kaiming uniform, a=sqrt(5))."""
  bound = 1.0 / (fan_in**0.5)

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
