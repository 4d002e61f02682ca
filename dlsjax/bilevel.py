"""The alternating bi-level search update (paper Section II-B, DARTS Algorithm 1).

One step: update the alphas on a batch of the alpha half (first order: the
gradient of the validation loss at the current weights; second order: through
one virtual SGD step of the weights, eq. 5), then the weights on a batch of the
weight half. The state is a plain dict of pytrees::

    {"params", "batch_stats", "alphas", "opt_w", "opt_a", "step"}

``make_search_step`` returns the per-device function; it averages gradients,
metrics and BatchNorm statistics with ``lax.pmean`` over ``axis_name`` and
uses cross-device (synchronised) batch statistics, so N devices compute what
one device computes on the global batch. ``sharding.py`` runs it under
``jax.pmap`` or ``jax.shard_map``.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import optax

from dlsjax import layers, losses, optim, sharding, supernet
from dlsjax import rng as rng_lib
from dlsjax.netspec import NetworkSpec


@dataclasses.dataclass(frozen=True)
class SearchHParams:
  """Hyper-parameters of the search (``config.search``; paper Section III-B)."""

  epochs: int = 50
  steps_per_epoch: int = 1
  order: str = "first"  # first | second
  w_lr: float = 2.5e-3
  w_lr_min: float = 1e-5  # cosine annealing floor
  w_momentum: float = 0.9
  w_weight_decay: float = 3e-4
  grad_clip: float = 5.0  # as in DARTS; 0 disables
  alpha_lr: float = 6e-4
  alpha_weight_decay: float = 1e-3
  alpha_b1: float = 0.5
  alpha_b2: float = 0.999
  # Epochs of weight steps before the alphas move (0: the paper, from the
  # first step). DARTS-family methods warm up the weights first (PC-DARTS: 15
  # of 50 epochs) so that the alphas are not driven by barely trained
  # convolutions, which favour parameter-free ops.
  alpha_warmup_epochs: int = 0
  focal_gamma: float = 2.0
  focal_alpha: float = 1.0
  drop_path: float = 0.2  # fixed during the search

  def __post_init__(self):
    if self.order not in ("first", "second"):
      raise ValueError(f"search.order must be 'first' or 'second', got {self.order!r}")

  @classmethod
  def from_config(cls, search_cfg, steps_per_epoch: int) -> SearchHParams:
    from dlsjax.configs import dataclass_from_config

    return dataclass_from_config(cls, search_cfg, steps_per_epoch=steps_per_epoch)


def weight_lr(h: SearchHParams):
  """Cosine annealing per epoch, as PyTorch's ``CosineAnnealingLR`` stepped each epoch."""
  return optim.cosine_by_epoch(h.w_lr, h.w_lr_min, h.epochs, h.steps_per_epoch)


def weight_optimizer(h: SearchHParams) -> optax.GradientTransformation:
  """SGD with momentum and (coupled) weight decay after gradient clipping, as DARTS."""
  return optim.sgd(
    weight_lr(h), momentum=h.w_momentum, weight_decay=h.w_weight_decay, grad_clip=h.grad_clip
  )


def alpha_optimizer(h: SearchHParams) -> optax.GradientTransformation:
  """Adam with L2 weight decay added to the gradient (PyTorch ``Adam(weight_decay=)``).

  With ``alpha_warmup_epochs`` the update is zero (and Adam's state untouched)
  for the first ``alpha_warmup_epochs * steps_per_epoch`` steps.
  """
  adam = optax.chain(
    optax.add_decayed_weights(h.alpha_weight_decay),
    optax.adam(h.alpha_lr, b1=h.alpha_b1, b2=h.alpha_b2, eps=1e-8),
  )
  if not h.alpha_warmup_epochs:
    return adam
  warmup = h.alpha_warmup_epochs * h.steps_per_epoch
  return optax.transforms.conditionally_mask(adam, lambda step: step >= warmup)


def momentum_buffer(opt_w) -> dict:
  """The SGD momentum buffer inside ``weight_optimizer``'s state."""
  for leaf in jax.tree.leaves(opt_w, is_leaf=lambda x: isinstance(x, optax.TraceState)):
    if isinstance(leaf, optax.TraceState):
      return leaf.trace
  raise ValueError("no momentum buffer (optax.TraceState) in the weight optimizer state")


def init_state(spec: NetworkSpec, h: SearchHParams, rng) -> dict:
  """Fresh search state: weights, BN statistics, alphas and both optimizer states.

  One jitted call (eager optimizer init would compile a kernel per parameter).
  """
  spec.log_structure()

  @jax.jit
  def make(rng):
    r_w, r_a = jax.random.split(rng)
    model = supernet.make_supernet(spec)
    alphas = supernet.init_alphas(spec, r_a)
    images, masks = supernet.dummy_images(spec, 2), supernet.init_masks(spec)
    init_rngs = {"params": layers.init_key(rng_lib.raw(r_w))}
    variables = model.init(init_rngs, images, alphas, masks, train=True)
    return {
      "params": variables["params"],
      "batch_stats": variables["batch_stats"],
      "alphas": alphas,
      "opt_w": weight_optimizer(h).init(variables["params"]),
      "opt_a": alpha_optimizer(h).init(alphas),
      "step": jnp.zeros((), jnp.int32),
    }

  return make(rng)


def make_loss_fn(spec: NetworkSpec, h: SearchHParams, *, axis_name: str | None = "data"):
  """``loss(params, alphas, stats, batch, rng, update_stats[, masks]) -> (loss, (logits, stats))``.

  The focal loss of the supernet in training mode (batch statistics,
  synchronised over ``axis_name``); ``masks`` default to every operation
  unmasked.
  """
  no_masks = supernet.init_masks(spec)

  def loss_fn(params, alphas, batch_stats, batch, rng, update_stats, masks=None):
    logits, new_stats = supernet.apply(
      {"params": params, "batch_stats": batch_stats},
      batch["images"],
      alphas,
      no_masks if masks is None else masks,
      spec=spec,
      train=True,
      rngs={"dropout": rng},
      drop_prob=h.drop_path,
      update_stats=update_stats,
      bn_axis_name=axis_name,
    )
    loss = losses.focal_loss(logits, batch["target"], gamma=h.focal_gamma, alpha=h.focal_alpha)
    return loss, (logits, new_stats)

  return loss_fn


def virtual_weights(h: SearchHParams, xi, params, momentum, g_w):
  """The DARTS virtual step ``w - xi (mu m + g + wd w)`` (momentum and weight decay included)."""
  return jax.tree.map(
    lambda w, m, g: w - xi * (h.w_momentum * m + g + h.w_weight_decay * w), params, momentum, g_w
  )


def mixed_product(loss_fn, params, alphas, stats, batch, rng, v):
  """``(d2 L / dw dalpha) v`` of ``loss_fn`` (BN statistics not updated), exactly.

  Forward-over-reverse: ``jax.jvp`` of the alpha gradient in the weight
  direction ``v``. (Reverse-over-forward gives the same numbers at the same
  cost on the CPU measured; it is the reference in ``tests/reference_steps.py``.)
  """

  def alpha_grad(p):
    return jax.grad(lambda a: loss_fn(p, a, stats, batch, rng, False)[0])(alphas)

  return jax.jvp(alpha_grad, (params,), (v,))[1]


def _select(cond, new, old):
  """``new`` where the traced ``cond`` holds, else ``old``, leaf by leaf."""
  return jax.tree.map(lambda n, o: jnp.where(cond, n, o), new, old)


def vmap_invariant_key(key):
  """``key`` as a threefry key, whose draws are the same under ``jax.vmap`` (``search --seeds``).

  The library's keys are ``rbg`` (``dlsjax.rng``: it compiles much faster);
  its split and fold-in are threefry-based, but its random
  bits come from ``lax.rng_bit_generator``, whose draws differ when vmapped over
  keys. The few DropPath draws of a step are made with threefry instead.
  """
  return jax.random.wrap_key_data(rng_lib.raw(key).reshape(-1)[:2], impl="threefry2x32")


def step_keys(state, rng, axis_name: str | None):
  """``(r_train, r_val)``: this step's DropPath keys (per device under ``axis_name``)."""
  rng = rng_lib.step_key(rng, state["step"], axis_name)
  return tuple(vmap_invariant_key(k) for k in jax.random.split(rng))


def finish_step(h, state, params, alphas, stats, opt_w, opt_a, train, val, g_norms, axis_name):
  """The new state and the step's metrics; ``train``/``val`` are ``(loss, logits, labels)``,
  ``g_norms`` the weight and alpha gradients' norms."""
  metrics = {
    "train_loss": train[0],
    "train_acc": losses.accuracy(train[1], train[2]),
    "val_loss": val[0],
    "val_acc": losses.accuracy(val[1], val[2]),
    "w_grad_norm": g_norms[0],
    "alpha_grad_norm": g_norms[1],
    "w_lr": weight_lr(h)(state["step"]),
  }
  new_state = {
    "params": params,
    "batch_stats": sharding.pmean(stats, axis_name),
    "alphas": alphas,
    "opt_w": opt_w,
    "opt_a": opt_a,
    "step": state["step"] + 1,
  }
  return new_state, sharding.pmean(metrics, axis_name)


def make_search_step(spec: NetworkSpec, h: SearchHParams, *, axis_name: str | None = "data"):
  """``step(state, train_batch, val_batch, rng) -> (state, metrics)`` for one device.

  ``train_batch`` (weight half) and ``val_batch`` (alpha half) are this
  device's shards ``{"images", "label", "target", ...}``; ``rng`` is raw key
  data or a typed key (``dlsjax.rng``). With ``axis_name`` None it runs
  without collectives (a single device, no mapping).

  The phases of a step run through one compiled forward+backward, a short
  ``lax.scan`` over the phases: first order, the alpha phase then the weight
  phase (the price: the weight gradient of the alpha phase, computed and
  dropped); second order, the virtual step's weight gradient, the gradients
  at the virtual weights with the mixed product under a ``lax.cond``, then
  the weight phase. Same arithmetic as one graph per gradient, at a fraction
  of the compile time (benchmarks/RESULTS.md); ``tests/reference_steps.py``
  holds that unfused step, and the tests pin this one to it.
  """
  w_tx, a_tx = weight_optimizer(h), alpha_optimizer(h)
  schedule = weight_lr(h)
  loss_fn = make_loss_fn(spec, h, axis_name=axis_name)

  def pmean(x):
    return sharding.pmean(x, axis_name)

  def finish(state, params, alphas, stats, opt_w, opt_a, train, val, g_norms):
    return finish_step(
      h, state, params, alphas, stats, opt_w, opt_a, train, val, g_norms, axis_name
    )

  def fused_step(state, train_batch, val_batch, rng):
    """First order, both phases through one scan body: phase 0 alphas, phase 1 weights."""
    r_train, r_val = step_keys(state, rng, axis_name)
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)

    def phase(carry, xs):
      params, alphas, stats, opt_w, opt_a = carry
      batch, r, is_weight_phase = xs
      (loss, (logits, stats)), grads = grad_fn(params, alphas, stats, batch, r, True)
      g_w, g_a = pmean(grads)
      upd_a, new_opt_a = a_tx.update(g_a, opt_a, alphas)
      upd_w, new_opt_w = w_tx.update(g_w, opt_w, params)
      alphas = _select(is_weight_phase, alphas, optax.apply_updates(alphas, upd_a))
      opt_a = _select(is_weight_phase, opt_a, new_opt_a)
      params = _select(is_weight_phase, optax.apply_updates(params, upd_w), params)
      opt_w = _select(is_weight_phase, new_opt_w, opt_w)
      g_norm = jnp.where(is_weight_phase, optax.global_norm(g_w), optax.global_norm(g_a))
      return (params, alphas, stats, opt_w, opt_a), (loss, logits, g_norm)

    batches = jax.tree.map(lambda v, t: jnp.stack([v, t]), val_batch, train_batch)
    xs = (batches, jnp.stack([r_val, r_train]), jnp.array([False, True]))
    carry = tuple(state[k] for k in ("params", "alphas", "batch_stats", "opt_w", "opt_a"))
    (params, alphas, stats, opt_w, opt_a), (loss, logits, g_norm) = jax.lax.scan(phase, carry, xs)
    return finish(
      state, params, alphas, stats, opt_w, opt_a,
      (loss[1], logits[1], train_batch["label"]),
      (loss[0], logits[0], val_batch["label"]),
      (g_norm[1], g_norm[0]),
    )  # fmt: skip

  def fused_second_step(state, train_batch, val_batch, rng):
    """Second order, the three gradients through one scan body (phases 0, 1, 2).

    0: ``dL_train/dw`` at ``(w, alpha)`` for the virtual step (statistics not
    kept); 1: the gradients at ``(w', alpha)`` on the alpha half, then (under
    ``lax.cond``, only in this phase) the mixed product and the alpha update,
    as eq. 5 (the DARTS virtual step, momentum and weight decay included); 2:
    the weight phase.
    """
    r_train, r_val = step_keys(state, rng, axis_name)
    grad_fn = jax.value_and_grad(loss_fn, argnums=(0, 1), has_aux=True)
    xi = schedule(state["step"])
    mom = momentum_buffer(state["opt_w"])
    params0, stats0 = state["params"], state["batch_stats"]

    def mixed(alphas, g_wv):
      return pmean(mixed_product(loss_fn, params0, alphas, stats0, train_batch, r_train, g_wv))

    def phase(carry, xs):
      params, alphas, stats, opt_w, opt_a, g_w0 = carry
      batch, r, k = xs
      w_in = _select(k == 1, virtual_weights(h, xi, params, mom, g_w0), params)
      (loss, (logits, new_stats)), grads = grad_fn(w_in, alphas, stats, batch, r, True)
      g_w, g_a = pmean(grads)
      zeros = jax.tree.map(jnp.zeros_like, alphas)
      m_a = jax.lax.cond(k == 1, mixed, lambda a, v: zeros, alphas, g_w)
      g_a = jax.tree.map(lambda d, m: d - xi * m, g_a, m_a)
      upd_a, new_opt_a = a_tx.update(g_a, opt_a, alphas)
      upd_w, new_opt_w = w_tx.update(g_w, opt_w, params)
      alphas = _select(k == 1, optax.apply_updates(alphas, upd_a), alphas)
      opt_a = _select(k == 1, new_opt_a, opt_a)
      params = _select(k == 2, optax.apply_updates(params, upd_w), params)
      opt_w = _select(k == 2, new_opt_w, opt_w)
      stats = _select(k == 0, stats, new_stats)
      g_w0 = _select(k == 0, g_w, g_w0)
      g_norm = jnp.where(k == 1, optax.global_norm(g_a), optax.global_norm(g_w))
      return (params, alphas, stats, opt_w, opt_a, g_w0), (loss, logits, g_norm)

    batches = jax.tree.map(lambda t, v: jnp.stack([t, v, t]), train_batch, val_batch)
    xs = (batches, jnp.stack([r_train, r_val, r_train]), jnp.arange(3))
    carry = tuple(state[k] for k in ("params", "alphas", "batch_stats", "opt_w", "opt_a"))
    carry += (jax.tree.map(jnp.zeros_like, state["params"]),)
    (params, alphas, stats, opt_w, opt_a, _), (loss, logits, g_norm) = jax.lax.scan(
      phase, carry, xs
    )
    return finish(
      state, params, alphas, stats, opt_w, opt_a,
      (loss[2], logits[2], train_batch["label"]),
      (loss[1], logits[1], val_batch["label"]),
      (g_norm[2], g_norm[1]),
    )  # fmt: skip

  return fused_step if h.order == "first" else fused_second_step


def make_weight_step(spec: NetworkSpec, h: SearchHParams, *, axis_name: str | None = "data"):
  """``step(state, batch, masks, rng) -> (state, metrics)``: weights only, alphas frozen.

  The fine-tuning of a partly derived supernet between PT decisions
  (``derive.py``). ``state`` is ``{"params", "batch_stats", "alphas", "opt_w",
  "step"}``; ``masks`` the current derivation masks.
  """
  w_tx = weight_optimizer(h)
  loss_fn = make_loss_fn(spec, h, axis_name=axis_name)

  def step(state, batch, masks, rng):
    rng = rng_lib.step_key(rng, state["step"], axis_name)
    grad_fn = jax.value_and_grad(loss_fn, argnums=0, has_aux=True)
    (loss, (logits, stats)), g = grad_fn(
      state["params"], state["alphas"], state["batch_stats"], batch, rng, True, masks
    )
    g, stats = sharding.pmean((g, stats), axis_name)
    upd, opt_w = w_tx.update(g, state["opt_w"], state["params"])
    new_state = {
      **state,
      "params": optax.apply_updates(state["params"], upd),
      "batch_stats": stats,
      "opt_w": opt_w,
      "step": state["step"] + 1,
    }
    metrics = {"loss": loss, "acc": losses.accuracy(logits, batch["label"])}
    return new_state, sharding.pmean(metrics, axis_name)

  return step
