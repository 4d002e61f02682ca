"""Focal loss, the bi-level step (first/second order) and its device-mapped runs."""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import reference_steps
from conftest import one_cell_spec

from dlsjax import bilevel, losses, sharding


def test_focal_loss_hand_computed():
  logits = jnp.array([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
  onehot = jnp.eye(3)[jnp.array([0, 2])]
  p0 = np.exp(2.0) / (np.exp(2.0) + 2.0)
  p1 = 1.0 / (2.0 + np.e)
  want = -((1 - p0) ** 2 * np.log(p0) + (1 - p1) ** 2 * np.log(p1)) / 2
  np.testing.assert_allclose(losses.focal_loss(logits, onehot, gamma=2.0), want, rtol=1e-6)
  # gamma = 0 is cross-entropy; alpha scales.
  ce = -(np.log(p0) + np.log(p1)) / 2
  np.testing.assert_allclose(losses.focal_loss(logits, onehot, gamma=0.0), ce, rtol=1e-6)
  np.testing.assert_allclose(
    losses.focal_loss(logits, onehot, gamma=0.0, alpha=0.25), 0.25 * ce, rtol=1e-6
  )
  # Soft (CutMix) targets weight each class's term; weights drop padded rows.
  soft = jnp.array([[0.7, 0.3, 0.0]])
  q = jax.nn.softmax(logits[:1])[0]
  want_soft = -(0.7 * (1 - q[0]) ** 2 * np.log(q[0]) + 0.3 * (1 - q[1]) ** 2 * np.log(q[1]))
  np.testing.assert_allclose(losses.focal_loss(logits[:1], soft), want_soft, rtol=1e-6)
  masked = losses.focal_loss(logits, onehot, gamma=0.0, weights_B=jnp.array([1.0, 0.0]))
  np.testing.assert_allclose(masked, -np.log(p0), rtol=1e-6)
  # Focal down-weights easy examples relative to cross-entropy.
  assert losses.focal_loss(logits, onehot) < losses.focal_loss(logits, onehot, gamma=0.0)


def test_cosine_schedule_per_epoch():
  h = bilevel.SearchHParams(epochs=4, steps_per_epoch=10, w_lr=0.1, w_lr_min=0.001)
  lr = bilevel.weight_lr(h)
  assert float(lr(0)) == pytest.approx(0.1) and float(lr(9)) == pytest.approx(0.1)
  want_e2 = 0.001 + (0.1 - 0.001) * 0.5 * (1 + np.cos(np.pi * 2 / 4))
  assert float(lr(25)) == pytest.approx(want_e2)
  assert float(lr(39)) > 0.001 and float(lr(1000)) == pytest.approx(float(lr(39)))


def batch(spec, n, seed):
  rng = np.random.default_rng(seed)
  r = spec.resolution
  images = {m.name: rng.random((n, r, r, m.channels), np.float32) for m in spec.modalities}
  labels = rng.integers(0, spec.num_classes, n)
  return {
    "images": images,
    "label": labels.astype(np.int32),
    "target": np.eye(spec.num_classes, dtype=np.float32)[labels],
  }


@jax.jit
def to64(tree):
  return jax.tree.map(lambda x: x.astype(jnp.float64) if x.dtype == jnp.float32 else x, tree)


def with_momentum(opt_state, trace):
  def swap(x):
    return x._replace(trace=trace) if isinstance(x, optax.TraceState) else x

  return jax.tree.map(swap, opt_state, is_leaf=lambda x: isinstance(x, optax.TraceState))


@pytest.mark.heavy
def test_second_order_matches_finite_differences():
  """The exact unrolled alpha gradient equals a central finite difference of eq. (5)."""
  # One cell and few ops keep the second-order graph (three gradients and a
  # jvp) quick to trace and compile; the formula does not depend on the layout.
  spec = one_cell_spec()
  h = bilevel.SearchHParams(order="second", steps_per_epoch=5, w_lr=0.05, drop_path=0.2)
  with jax.enable_x64(True):
    state = to64(bilevel.init_state(spec, h, jax.random.PRNGKey(0)))
    # A non-zero momentum buffer, so the virtual step's momentum term counts.
    mom = jax.jit(lambda t: jax.tree.map(lambda p: 0.1 * jnp.ones_like(p), t))(state["params"])
    state["opt_w"] = with_momentum(state["opt_w"], mom)
    tb, vb = to64(batch(spec, 6, 1)), to64(batch(spec, 6, 2))
    r_train, r_val = jax.random.split(jax.random.PRNGKey(3))
    g = jax.jit(reference_steps.make_alpha_grad(spec, h))(state, tb, vb, r_train, r_val)[0]

    loss_fn = bilevel.make_loss_fn(spec, h, axis_name=None)
    xi = bilevel.weight_lr(h)(state["step"])

    @jax.jit
    def outer(alphas):  # L_val(w'(alpha), alpha), the DARTS virtual step written out
      def train_loss(p):
        return loss_fn(p, alphas, state["batch_stats"], tb, r_train, False)[0]

      gw = jax.grad(train_loss)(state["params"])
      virtual = jax.tree.map(
        lambda w, m, d: w - xi * (h.w_momentum * m + d + h.w_weight_decay * w),
        state["params"], mom, gw,
      )  # fmt: skip
      return loss_fn(virtual, alphas, state["batch_stats"], vb, r_val, False)[0]

    # Float64 and a small step: a ReLU network is piecewise smooth, and larger
    # steps cross activation kinks (measured: 1e-4 gives ~1e-3 relative noise).
    eps, rng = 1e-6, np.random.default_rng(0)
    for _ in range(2):
      d = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape)), state["alphas"])
      plus = outer(jax.tree.map(lambda a, v: a + eps * v, state["alphas"], d))
      minus = outer(jax.tree.map(lambda a, v: a - eps * v, state["alphas"], d))
      fd = (plus - minus) / (2 * eps)
      analytic = sum(jnp.vdot(g[k], d[k]) for k in g)
      np.testing.assert_allclose(float(analytic), float(fd), rtol=1e-5)


@pytest.mark.heavy
def test_mixed_product_is_the_same_in_both_autodiff_orders():
  """forward-over-reverse and reverse-over-forward give the same (d2 L / dw dalpha) v."""
  spec = one_cell_spec()
  h = bilevel.SearchHParams(order="second", drop_path=0.2)
  with jax.enable_x64(True):
    state = to64(bilevel.init_state(spec, h, jax.random.PRNGKey(0)))
    loss_fn = bilevel.make_loss_fn(spec, h, axis_name=None)
    rng = np.random.default_rng(1)
    v = jax.tree.map(lambda p: jnp.asarray(rng.normal(size=p.shape)), state["params"])
    tb, r = to64(batch(spec, 6, 1)), jax.random.PRNGKey(2)

    @functools.partial(jax.jit, static_argnums=0)
    def product(fn):
      args = (state["params"], state["alphas"], state["batch_stats"], tb, r, v)
      return fn(loss_fn, *args)

    fwd_rev = product(bilevel.mixed_product)
    rev_fwd = product(reference_steps.mixed_product_rev_fwd)
  for k in fwd_rev:
    assert np.abs(fwd_rev[k]).max() > 1e-8, k  # a non-trivial product
    np.testing.assert_allclose(rev_fwd[k], fwd_rev[k], rtol=1e-9, atol=1e-12, err_msg=k)


def run_steps(spec, h, mode, n_devices, batches, init, make_step=bilevel.make_search_step):
  runner = sharding.Runner(make_step(spec, h), mode=mode, devices=jax.devices()[:n_devices])
  state = runner.replicate(init)
  metrics = []
  for tb, vb in batches:
    state, m = runner(state, runner.shard_batch(tb), runner.shard_batch(vb), jax.random.PRNGKey(1))
    metrics.append(jax.device_get(m))
  return runner.unreplicate(state), metrics


@pytest.mark.heavy
def test_one_device_pmap_and_shard_map_agree():
  """Same global batches: 1 device, 4 with pmap, 4 with shard_map give the same search state.

  The 1-device reference runs the two phases as two separate gradients
  (``reference_steps``) and the cells one by one (``share_cell_bodies=False``);
  the 4-device runs use the fused 2-step scan and one scan over the cells, so the
  comparison covers both formulations too.
  """
  # Two normal cells, one modality, no learnable stems: the device mapping is what is
  # tested. The 4-device runs scan the two cells with one body (``share_cell_bodies``, the
  # default), so synchronised BatchNorm inside that scan is covered; the reference does not.
  spec = dataclasses.replace(one_cell_spec(), cells=("normal", "normal"))
  assert spec.share_cell_bodies
  # DropPath off: its masks are drawn per device, so they differ by design.
  h = bilevel.SearchHParams(steps_per_epoch=3, w_lr=0.05, alpha_lr=0.01, drop_path=0.0)
  batches = [(batch(spec, 8, 2 * i), batch(spec, 8, 2 * i + 1)) for i in range(3)]
  # One initial state (host copy: each run donates its own device buffers).
  init = jax.device_get(bilevel.init_state(spec, h, jax.random.PRNGKey(0)))
  unshared = dataclasses.replace(spec, share_cell_bodies=False)
  unfused = reference_steps.make_unfused_search_step
  ref, m_ref = run_steps(unshared, h, "pmap", 1, batches, init, unfused)
  assert int(ref["step"]) == 3
  for mode in ("pmap", "shard_map"):
    out, m = run_steps(spec, h, mode, 4, batches, init)
    for k in ("alphas", "params", "batch_stats"):
      for a, b in zip(jax.tree.leaves(out[k]), jax.tree.leaves(ref[k]), strict=True):
        np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=f"{mode} {k}")
    np.testing.assert_allclose(m[-1]["train_loss"], m_ref[-1]["train_loss"], rtol=1e-5)
  # The alphas moved: the comparison is not between two initial states.
  assert np.abs(ref["alphas"]["normal"] - init["alphas"]["normal"]).max() > 1e-3


@pytest.mark.heavy
def test_fused_second_order_step_equals_the_unfused_one():
  """Second order with the three gradients (and the jvp) in one scan body = one graph each."""
  spec = one_cell_spec()
  h = bilevel.SearchHParams(
    order="second", steps_per_epoch=3, w_lr=0.05, alpha_lr=0.01, drop_path=0.2
  )
  batches = [(batch(spec, 6, 2 * i), batch(spec, 6, 2 * i + 1)) for i in range(2)]
  init = jax.device_get(bilevel.init_state(spec, h, jax.random.PRNGKey(0)))
  ref, m_ref = run_steps(
    spec, h, "pmap", 1, batches, init, reference_steps.make_unfused_search_step
  )
  out, m = run_steps(spec, h, "pmap", 1, batches, init)
  for k in ("alphas", "params", "batch_stats", "opt_w", "opt_a"):
    for a, b in zip(jax.tree.leaves(out[k]), jax.tree.leaves(ref[k]), strict=True):
      np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5, err_msg=k)
  for key in m_ref[-1]:
    np.testing.assert_allclose(m[-1][key], m_ref[-1][key], rtol=1e-4, atol=1e-6, err_msg=key)
  # The alphas moved: the comparison is not between two initial states.
  assert np.abs(ref["alphas"]["normal"] - init["alphas"]["normal"]).max() > 1e-3


def test_paper_search_defaults():
  """Every search hyper-parameter of paper Section III-B is the `paper` config's default."""
  from dlsjax.configs import get_config

  c = get_config("paper")
  h = bilevel.SearchHParams.from_config(c.search, steps_per_epoch=1)
  assert (h.epochs, c.search.batch_size, h.order) == (50, 16, "first")
  assert (h.w_lr, h.w_lr_min, h.w_momentum, h.w_weight_decay) == (2.5e-3, 1e-5, 0.9, 3e-4)
  assert (h.alpha_lr, h.alpha_weight_decay, h.alpha_b1, h.alpha_b2) == (6e-4, 1e-3, 0.5, 0.999)
  assert (h.focal_gamma, h.focal_alpha, h.drop_path, h.grad_clip) == (2.0, 1.0, 0.2, 5.0)
  assert (c.search.crop_padding, c.search.hflip, c.search.vflip) == (8, True, True)


@pytest.mark.parametrize("mode", sharding.MODES)
def test_layout_splits_batches_and_copies_state_back(mode):
  """Host batches -> each mode's device layout; state -> host; an uneven batch is refused."""
  lay = sharding.Layout(mode)
  assert lay.n == 4  # conftest's forced CPU devices
  batch = {"images": {"WL": np.arange(8 * 2.0).reshape(8, 2)}, "label": np.arange(8)}
  out = lay.shard_batch(batch)
  want = (4, 2, 2) if mode == "pmap" else (8, 2)
  assert out["images"]["WL"].shape == want
  np.testing.assert_array_equal(np.asarray(out["label"]).reshape(-1), np.arange(8))
  state = {"w": np.ones((3, 2), np.float32), "step": np.int32(5)}
  back = lay.unreplicate(lay.replicate(state))
  np.testing.assert_array_equal(back["w"], state["w"])
  assert back["step"] == 5 and isinstance(back["w"], np.ndarray)
  with pytest.raises(ValueError, match="global batch of 6 does not split over 4 devices"):
    lay.shard_batch({"label": np.arange(6)})


def test_alpha_warmup_holds_the_alphas_then_releases_them():
  h = bilevel.SearchHParams(steps_per_epoch=2, alpha_warmup_epochs=1, alpha_lr=0.1)
  tx = bilevel.alpha_optimizer(h)
  alphas = {"normal": jnp.zeros((3, 4))}
  grads = {"normal": jnp.arange(12.0).reshape(3, 4) - 5.0}
  state = tx.init(alphas)
  moved = []
  for _ in range(4):
    upd, state = tx.update(grads, state, alphas)
    alphas = optax.apply_updates(alphas, upd)
    moved.append(bool(jnp.any(upd["normal"] != 0)))
  assert moved == [False, False, True, True]
  # After the warm-up the first real step is Adam's first step (state untouched before):
  fresh = bilevel.alpha_optimizer(dataclasses.replace(h, alpha_warmup_epochs=0))
  upd0, _ = fresh.update(
    grads, fresh.init({"normal": jnp.zeros((3, 4))}), {"normal": jnp.zeros((3, 4))}
  )
  tx2 = bilevel.alpha_optimizer(h)
  s2 = tx2.init({"normal": jnp.zeros((3, 4))})
  for _ in range(3):
    upd, s2 = tx2.update(grads, s2, {"normal": jnp.zeros((3, 4))})
  np.testing.assert_allclose(upd["normal"], upd0["normal"], rtol=1e-6)
