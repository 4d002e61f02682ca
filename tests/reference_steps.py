"""Reference formulations that lost a measurement, kept only to pin the library's winners.

* ``make_alpha_grad`` and ``make_unfused_search_step``: the bi-level step with one graph per
  gradient (what ``bilevel.make_search_step`` computes through one scan over the phases);
* ``mixed_product_rev_fwd``: the mixed second-derivative product by reverse-over-forward
  autodiff (``bilevel.mixed_product`` is forward-over-reverse).

The tests assert that the library's step equals these (``bilevel_test.py``); the measurements
that chose the library's form are in benchmarks/RESULTS.md ("Tried and not adopted").
"""

import jax
import optax

from dlsjax import bilevel


def mixed_product_rev_fwd(loss_fn, params, alphas, stats, batch, rng, v):
  """``jax.grad`` over the alphas of the directional derivative ``jvp(L, v)``."""

  def directional(a):
    return jax.jvp(lambda p: loss_fn(p, a, stats, batch, rng, False)[0], (params,), (v,))[1]

  return jax.grad(directional)(alphas)


def make_alpha_grad(spec, h, *, axis_name=None, mixed=bilevel.mixed_product):
  """``alpha_grad(state, train_batch, val_batch, r_train, r_val) -> (g, loss, logits, stats)``.

  First order: ``dL_val/dalpha`` at the current weights. Second order (eq. 5): the gradient
  of ``L_val(w', alpha)`` with ``w' = w - xi (mu m + dL_train/dw + wd w)``, differentiated
  exactly through ``w'``: ``dL_val/dalpha - xi (d2 L_train / dw dalpha) v`` with
  ``v = dL_val/dw'``.
  """
  loss_fn = bilevel.make_loss_fn(spec, h, axis_name=axis_name)
  schedule = bilevel.weight_lr(h)

  def pmean(x):
    return jax.lax.pmean(x, axis_name) if axis_name else x

  def first(state, train_batch, val_batch, r_train, r_val):
    grad_fn = jax.value_and_grad(loss_fn, argnums=1, has_aux=True)
    (loss, (logits, stats)), g = grad_fn(
      state["params"], state["alphas"], state["batch_stats"], val_batch, r_val, True
    )
    return pmean(g), loss, logits, stats

  def second(state, train_batch, val_batch, r_train, r_val):
    params, alphas, stats = state["params"], state["alphas"], state["batch_stats"]
    xi = schedule(state["step"])
    mom = bilevel.momentum_buffer(state["opt_w"])

    def train_loss(p, a):
      return loss_fn(p, a, stats, train_batch, r_train, False)[0]

    g_w = pmean(jax.grad(train_loss)(params, alphas))
    virtual = bilevel.virtual_weights(h, xi, params, mom, g_w)
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    (loss, (logits, new_stats)), (g_wv, g_a) = grad_fn(
      virtual, alphas, stats, val_batch, r_val, True
    )
    g_wv = pmean(g_wv)
    m = mixed(loss_fn, params, alphas, stats, train_batch, r_train, g_wv)
    g = jax.tree.map(lambda d, m: d - xi * m, pmean(g_a), pmean(m))
    return g, loss, logits, new_stats

  return first if h.order == "first" else second


def make_unfused_search_step(spec, h, *, axis_name="data"):
  """The bi-level step as separate graphs: the alpha gradient, then the weight gradient."""
  w_tx, a_tx = bilevel.weight_optimizer(h), bilevel.alpha_optimizer(h)
  loss_fn = bilevel.make_loss_fn(spec, h, axis_name=axis_name)
  alpha_grad = make_alpha_grad(spec, h, axis_name=axis_name)

  def step(state, train_batch, val_batch, rng):
    r_train, r_val = bilevel.step_keys(state, rng, axis_name)
    g_a, val_loss, val_logits, stats = alpha_grad(state, train_batch, val_batch, r_train, r_val)
    upd, opt_a = a_tx.update(g_a, state["opt_a"], state["alphas"])
    alphas = optax.apply_updates(state["alphas"], upd)
    grad_fn = jax.value_and_grad(loss_fn, argnums=0, has_aux=True)
    (train_loss, (train_logits, stats)), g_w = grad_fn(
      state["params"], alphas, stats, train_batch, r_train, True
    )
    g_w = jax.lax.pmean(g_w, axis_name) if axis_name else g_w
    upd, opt_w = w_tx.update(g_w, state["opt_w"], state["params"])
    params = optax.apply_updates(state["params"], upd)
    return bilevel.finish_step(
      h, state, params, alphas, stats, opt_w, opt_a,
      (train_loss, train_logits, train_batch["label"]),
      (val_loss, val_logits, val_batch["label"]),
      (optax.global_norm(g_w), optax.global_norm(g_a)),
      axis_name,
    )  # fmt: skip

  return step
