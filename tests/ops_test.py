import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlsjax import layers, ops
from dlsjax.cells import OpCall
from dlsjax.layers import OpContext

SEARCH = OpContext(train=True, affine=False, pool_bn=True)


def run_op(name, x, stride=1, C=None, ctx=SEARCH, seed=0):
  mod = OpCall(name, C or x.shape[-1], stride, ctx)
  v = mod.init(jax.random.PRNGKey(seed), x)
  y, _ = mod.apply(v, x, mutable=["batch_stats"])
  return y, v


def rand(shape, seed=0):
  return jax.random.normal(jax.random.PRNGKey(seed), shape)


def test_op_sets_match_paper():
  assert ops.DARTS8 == (
    "none",
    "max_pool_3x3",
    "avg_pool_3x3",
    "skip_connect",
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
  )
  assert ops.PAPER10 == (*ops.DARTS8, "nor_conv_3x3", "nor_conv_5x5")
  assert len(ops.PAPER9) == 9 and "dil_conv_5x5" not in ops.PAPER9
  assert {"nor_conv_1x1", "nor_conv_3x3"} <= set(ops.PAPER9)
  assert ops.resolve_op_set("paper10") == ops.PAPER10
  with pytest.raises(KeyError, match="unknown op set"):
    ops.resolve_op_set("paper11")
  with pytest.raises(KeyError, match="unknown operation 'nope'"):
    ops.resolve_op_set(("none", "nope"))


@pytest.mark.parametrize("name", ops.PAPER10 + ("nor_conv_1x1",))
@pytest.mark.parametrize("stride", [1, 2])
def test_every_op_keeps_channels_and_strides(name, stride):
  y, _ = run_op(name, rand((2, 8, 8, 4)), stride)
  chex.assert_shape(y, (2, 8 // stride, 8 // stride, 4))
  chex.assert_tree_all_finite(y)


@pytest.mark.parametrize(
  "name",
  [
    "sep_conv_3x3",
    "sep_conv_5x5",
    "dil_conv_3x3",
    "dil_conv_5x5",
    "nor_conv_3x3",
    "nor_conv_5x5",
    "nor_conv_1x1",
  ],
)
def test_conv_ops_are_relu_conv_bn(name):
  x = rand((4, 8, 8, 4))
  y, _ = run_op(name, x)
  y_relu, _ = run_op(name, jax.nn.relu(x))
  # ReLU comes first: negative inputs do not matter.
  np.testing.assert_allclose(y, y_relu, atol=1e-5)
  # BN comes last (non-affine, batch statistics): zero mean, unit variance per channel.
  np.testing.assert_allclose(y.mean((0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(y.var((0, 1, 2)), 1.0, atol=1e-2)


def test_separable_conv_is_applied_twice_with_stride_in_first_block():
  x = rand((2, 8, 8, 4))
  mod = OpCall("sep_conv_3x3", 6, 2, SEARCH)
  v = mod.init(jax.random.PRNGKey(0), x)
  (y, state) = mod.apply(v, x, mutable=["batch_stats", "intermediates"], capture_intermediates=True)
  p = v["params"]["SepConv_0"]
  assert set(p) == {"block1", "block2"}
  assert p["block1"]["depthwise"].shape == (3, 3, 1, 4)
  assert p["block1"]["pointwise"].shape == (4, 4)  # first block keeps C_in
  assert p["block2"]["pointwise"].shape == (4, 6)  # second maps to C_out
  inter = state["intermediates"]["SepConv_0"]
  chex.assert_shape(inter["block1"]["__call__"][0], (2, 4, 4, 4))  # stride here
  chex.assert_shape(inter["block2"]["__call__"][0], (2, 4, 4, 6))  # not here
  assert set(v["batch_stats"]["SepConv_0"]) == {"block1", "block2"}


def test_dilated_conv_has_dilation_two():
  # A 3x3 kernel with dilation 2 only sees pixels at even offsets: an impulse at
  # distance 1 from the centre does not reach the centre output.
  ctx = OpContext(train=False, affine=False)
  mod = OpCall("dil_conv_3x3", 1, 1, ctx)
  x = jnp.zeros((1, 7, 7, 1))
  v = mod.init(jax.random.PRNGKey(0), x)
  x1 = x.at[0, 3, 4, 0].set(1.0)
  x2 = x.at[0, 3, 5, 0].set(1.0)
  base = mod.apply(v, x)[0, 3, 3, 0]
  assert float(mod.apply(v, x1)[0, 3, 3, 0]) == pytest.approx(float(base))
  assert float(mod.apply(v, x2)[0, 3, 3, 0]) != pytest.approx(float(base))


def test_skip_connect_identity_and_factorized_reduce():
  x = rand((2, 8, 8, 4))
  y, v = run_op("skip_connect", x, 1)
  np.testing.assert_array_equal(y, x)
  assert v.get("params", {}) == {}
  y2, v2 = run_op("skip_connect", x, 2)
  fr = v2["params"]["FactorizedReduce_0"]
  assert fr["kernel1"].shape == (4, 2) and fr["kernel2"].shape == (4, 2)
  # The second half sees the input shifted by one pixel: changing pixel (1, 1)
  # changes only the second half of the channels.
  x_mod = x.at[:, 1, 1, :].add(10.0)
  ctx = OpContext(train=False)
  mod = OpCall("skip_connect", 4, 2, ctx)
  a, b = mod.apply(v2, x), mod.apply(v2, x_mod)
  diff = np.abs(np.asarray(a - b)).sum((0, 1, 2))
  assert np.all(diff[:2] == 0) and np.all(diff[2:] > 0)


def test_pooling_padding():
  ctx = OpContext(train=True, pool_bn=False)
  ones = jnp.ones((1, 5, 5, 2))
  y, _ = run_op("avg_pool_3x3", ones, ctx=ctx)
  np.testing.assert_allclose(y, 1.0)  # padding excluded from the average
  neg = -5.0 * ones
  y, _ = run_op("max_pool_3x3", neg, ctx=ctx)
  np.testing.assert_allclose(y, -5.0)  # padding is -inf, never the max
  # In the search network pooling is followed by a BN.
  _, v = run_op("max_pool_3x3", rand((2, 4, 4, 2)))
  assert "BatchNorm_0" in v["batch_stats"]["Pool_0"]


def test_search_bn_is_non_affine_and_derived_bn_is_affine():
  _, v = run_op("nor_conv_3x3", rand((2, 4, 4, 2)))
  assert set(v["params"]["ReLUConvBN_0"]) == {"kernel"}
  _, v = run_op("nor_conv_3x3", rand((2, 4, 4, 2)), ctx=OpContext(affine=True))
  assert set(v["params"]["ReLUConvBN_0"]["BatchNorm_0"]) == {"scale", "bias"}


CASES = [(3, 1, 1, (9, 9)), (5, 1, 2, (9, 7)), (3, 2, 1, (8, 6)), (5, 2, 2, (8, 8))]


def dense_depthwise(x, w, **kw):
  """The reference that lost on CPU: a dense convolution with a block-diagonal kernel."""
  c = x.shape[-1]
  return layers.conv(x, w[:, :, 0, :, None] * jnp.eye(c, dtype=w.dtype), **kw)


def test_depthwise_implementations_agree():
  """Same outputs, and same gradients w.r.t. input and kernel (also under a vmap over edges),
  as each other and as a dense block-diagonal convolution."""
  impls = ("xla", "toeplitz")
  for i, (k, dilation, stride, hw) in enumerate(CASES):
    x = rand((2, *hw, 6))
    w = rand((k, k, 1, 6), seed=1)
    kw = dict(stride=stride, dilation=dilation)
    ref = layers.depthwise_conv(x, w, **kw, impl="xla")
    np.testing.assert_allclose(dense_depthwise(x, w, **kw), ref, atol=1e-5)
    for impl in (*impls[1:], "auto"):
      np.testing.assert_allclose(layers.depthwise_conv(x, w, **kw, impl=impl), ref, atol=1e-5)
    if i % 3:  # gradients on the strided/non-square and the strided+dilated cases
      continue

    # Batched input and kernel: the second block of a separable conv in the supernet.
    def grads(impl, batched, x=x, w=w, kw=kw):
      def loss(x_, w_):
        f = lambda a, b: layers.depthwise_conv(a, b, **kw, impl=impl)
        y = jax.vmap(f)(x_, w_) if batched else f(x_, w_)
        return (y**2 * jnp.arange(y.shape[-1])).sum()

      xs, ws = (jnp.stack([x, 2 * x]), jnp.stack([w, -w])) if batched else (x, w)
      return jax.jit(jax.grad(loss, argnums=(0, 1)))(xs, ws)

    for batched in (False, True):
      g_ref = grads("xla", batched)
      for impl in impls[1:]:
        for got, want in zip(grads(impl, batched), g_ref, strict=True):
          np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
  with pytest.raises(ValueError, match="depthwise_impl"):
    layers.depthwise_conv(x, w, impl="fft")


@pytest.mark.parametrize(
  "k,stride,dilation,hw", [(3, 1, 1, 8), (5, 2, 1, 8), (5, 1, 1, 4), (3, 1, 2, 4), (5, 2, 1, 3)]
)
def test_conv_matches_plain_xla_convolution_in_both_layouts(k, stride, dilation, hw):
  """``layers.conv`` (NHWC inside, explicit padding when the kernel is wider than the
  image) gives the values of a plain 'same'-padded XLA convolution, also for CNHW input."""
  x = rand((2, hw, hw, 3))
  w = rand((k, k, 3, 5), seed=1)
  p = dilation * (k - 1) // 2
  want = jax.lax.conv_general_dilated(
    x, w, (stride, stride), ((p, p), (p, p)), rhs_dilation=(dilation, dilation),
    dimension_numbers=("NHWC", "HWIO", "NHWC"),
  )  # fmt: skip
  got = layers.conv(x, w, stride=stride, dilation=dilation)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
  xc = layers.to_layout(x, "NHWC", "CNHW")
  got_c = layers.conv(xc, w, stride=stride, dilation=dilation, layout="CNHW")
  assert got_c.shape == (5, 2, *want.shape[1:3])
  np.testing.assert_allclose(layers.to_layout(got_c, "CNHW", "NHWC"), want, rtol=1e-5, atol=1e-5)


def test_depthwise_auto_is_toeplitz_on_cpu():
  assert layers.resolve_depthwise_impl("auto") == (
    "toeplitz" if jax.default_backend() == "cpu" else "xla"
  )


def test_batchnorm_running_stats_update_only_when_mutable():
  x = rand((4, 4, 4, 3)) * 3 + 1
  bn = layers.BatchNorm(SEARCH)
  v = bn.init(jax.random.PRNGKey(0), x)
  _, new = bn.apply(v, x, mutable=["batch_stats"])
  np.testing.assert_allclose(new["batch_stats"]["mean"], 0.1 * x.mean((0, 1, 2)), rtol=1e-5)
  y = bn.apply(v, x)  # training mode, immutable: batch statistics, no update
  np.testing.assert_allclose(y.mean((0, 1, 2)), 0, atol=1e-5)


def test_register_op_rejects_duplicates():
  with pytest.raises(ValueError, match="already registered"):
    ops.register_op("sep_conv_3x3")(lambda C, s, ctx: None)


def test_init_key_is_deterministic_and_seed_dependent():
  def draw(seed):
    return np.asarray(jax.random.uniform(layers.init_key(jax.random.PRNGKey(seed)), (256,)))

  np.testing.assert_array_equal(draw(0), draw(0))
  assert not np.allclose(draw(0), draw(1))
  assert 0.4 < draw(0).mean() < 0.6  # uniform on [0, 1)
  typed = jax.random.key(3)
  assert layers.init_key(typed) is typed
  assert jax.random.split(layers.init_key(jax.random.PRNGKey(0)), 3).shape == (3,)


@pytest.mark.parametrize("stride", [1, 2])
@pytest.mark.parametrize("affine", [False, True])
def test_channel_major_layout_gives_the_nhwc_values(stride, affine):
  """Every built-in op supports CNHW inputs: same parameters, outputs and BN statistics."""
  x = rand((2, 6, 6, 4), seed=3)
  nhwc = OpContext(train=True, affine=affine, pool_bn=True)
  cnhw = OpContext(train=True, affine=affine, pool_bn=True, layout="CNHW")
  for name in ops.PAPER10 + ("nor_conv_1x1",):
    assert ops.get_op(name).channel_major, name
    mod = OpCall(name, 4, stride, nhwc)
    v = mod.init(jax.random.PRNGKey(1), x)
    if affine:  # non-trivial scale and bias
      v = jax.tree.map(lambda a: a + 0.1 * rand(a.shape, seed=7), v)
    y, s = mod.apply(v, x, mutable=["batch_stats"])
    yc, sc = OpCall(name, 4, stride, cnhw).apply(
      v, layers.to_layout(x, "NHWC", "CNHW"), mutable=["batch_stats"]
    )
    np.testing.assert_allclose(layers.to_layout(yc, "CNHW", "NHWC"), y, atol=1e-5, err_msg=name)
    chex.assert_trees_all_close(sc, s, atol=1e-6)


def test_layout_helpers():
  x = rand((2, 5, 7, 3))
  c = layers.to_layout(x, "NHWC", "CNHW")
  assert c.shape == (3, 2, 5, 7)
  np.testing.assert_array_equal(layers.to_layout(c, "CNHW", "NHWC"), x)
  np.testing.assert_array_equal(
    layers.to_layout(layers.spatial_slice(c, "CNHW", 1, 2), "CNHW", "NHWC"),
    layers.spatial_slice(x, "NHWC", 1, 2),
  )
  with pytest.raises(ValueError, match="layout must be one of"):
    layers.channel_axis("NCHW")


@pytest.mark.parametrize("layout", ["NHWC", "CNHW"])
@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_derivative_is_the_first_window_maximum(layout, stride):
  from jax import lax

  x = rand((2, 6, 6, 3), seed=5)
  x = layers.to_layout(x, "NHWC", layout)
  g = rand(layers.max_pool_3x3(x, stride, layout).shape, seed=6)
  window, strides, pad = layers._pool_window(stride, layout)
  ref = lambda x: lax.reduce_window(x, -jnp.inf, lax.max, window, strides, pad)
  ours = lambda x: layers.max_pool_3x3(x, stride, layout)
  np.testing.assert_array_equal(ours(x), ref(x))
  grad = lambda f: jax.grad(lambda x: jnp.sum(f(x) * g))(x)
  np.testing.assert_allclose(grad(ours), grad(ref), atol=1e-6)
  # A tie routes the gradient to one position only (the first in row-major order).
  flat = jnp.zeros_like(x)
  assert float(jnp.sum(jax.grad(lambda x: jnp.sum(ours(x)))(flat))) == g.size
  # Forward over reverse, as the second-order search step uses it.
  v = rand(x.shape, seed=8)
  hvp = lambda f: jax.jvp(jax.grad(lambda x: jnp.sum(f(x) ** 2)), (x,), (v,))
  chex.assert_trees_all_close(hvp(ours), hvp(ref), atol=1e-5)


@pytest.mark.parametrize("stride", [1, 2])
def test_max_pool_tap_is_the_first_maximum_of_each_window(stride):
  """``max_pool_tap`` (what the gradient routes through) against a direct loop, with ties."""
  x = np.asarray(np.random.default_rng(3).integers(0, 3, (2, 7, 7, 2)), np.float32)  # many ties
  got = np.asarray(layers.max_pool_tap(jnp.asarray(x), stride, "NHWC"))
  assert got.dtype == np.int8
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  for b, h, w, c in np.ndindex(got.shape):
    window = xp[b, h * stride : h * stride + 3, w * stride : w * stride + 3, c].reshape(-1)
    assert got[b, h, w, c] == int(np.argmax(window)), (b, h, w, c)  # argmax: the first maximum
