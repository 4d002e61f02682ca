"""``model.dtype=bfloat16``: computes in bfloat16, stores float32, stays close to float32."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from bilevel_test import batch
from conftest import one_cell_spec, tiny_spec
from genotype_test import random_choice

from dlsjax import bilevel, derived_net, network, precision, train


def search_steps(spec, steps=3):
  h = bilevel.SearchHParams(steps_per_epoch=steps, w_lr=0.05, alpha_lr=0.01, drop_path=0.0)
  step = jax.jit(bilevel.make_search_step(spec, h, axis_name=None))
  state = bilevel.init_state(dataclasses.replace(spec, dtype="float32"), h, jax.random.PRNGKey(0))
  losses = []
  for i in range(steps):
    state, m = step(state, batch(spec, 8, 2 * i), batch(spec, 8, 2 * i + 1), jax.random.PRNGKey(i))
    losses.append(float(m["train_loss"]))
  return state, losses, step


def test_bfloat16_search_computes_in_bf16_keeps_f32_state_and_tracks_f32():
  spec = one_cell_spec()
  bf = dataclasses.replace(spec, dtype="bfloat16")
  ref, ref_losses, _ = search_steps(spec)
  out, losses, step = search_steps(bf)
  # Stored state stays float32: parameters, BN statistics, alphas, optimiser states.
  for k in ("params", "batch_stats", "alphas", "opt_w", "opt_a"):
    for leaf in jax.tree.leaves(out[k]):
      if jnp.issubdtype(leaf.dtype, jnp.floating):
        assert leaf.dtype == jnp.float32, k
  # The convolutions run in bfloat16 (the lowered step holds bf16 convolutions).
  hlo = step.lower(out, batch(bf, 8, 0), batch(bf, 8, 1), jax.random.PRNGKey(0)).as_text()
  assert "bf16" in hlo and "convolution" in hlo
  # Close to float32 over a few steps (bf16 keeps 8 mantissa bits). Adam moves each alpha by
  # about the learning rate whatever its gradient's size, so an alpha whose gradient is
  # near zero may move the other way; the moves as a whole agree.
  np.testing.assert_allclose(losses, ref_losses, rtol=3e-2)
  init = bilevel.init_state(spec, bilevel.SearchHParams(), jax.random.PRNGKey(0))["alphas"]
  for part in ref["alphas"]:
    d_ref = np.asarray(ref["alphas"][part] - init[part]).ravel()
    d_bf = np.asarray(out["alphas"][part] - init[part]).ravel()
    assert np.abs(d_ref).max() > 1e-2  # the alphas moved: not a comparison of initial states
    assert np.corrcoef(d_ref, d_bf)[0, 1] > 0.9, part
    assert np.median(np.abs(d_ref - d_bf)) < 3e-3, part
    assert not np.array_equal(d_ref, d_bf)


def test_bfloat16_derived_network_and_training_step():
  spec = dataclasses.replace(tiny_spec(), dtype="bfloat16")
  choice = random_choice(spec)
  model = network.Network(spec, genotype=choice)
  h = train.TrainHParams(steps_per_epoch=2, epochs=2, batch_size=8, drop_path_max=0.0)
  state = train.init_state(model, h, jax.random.PRNGKey(0))
  variables = {"params": state["params"], "batch_stats": state["batch_stats"]}
  b = batch(spec, 8, 0)
  logits, stats, _ = derived_net.apply(model, variables, b["images"], train=True)
  assert logits.dtype == jnp.float32
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(stats))
  f32 = network.Network(dataclasses.replace(spec, dtype="float32"), genotype=choice)
  ref, _, _ = derived_net.apply(f32, variables, b["images"], train=True)
  np.testing.assert_allclose(logits, ref, rtol=0.1, atol=0.05)
  step = jax.jit(train.make_train_step(model, h, axis_name=None))
  state, m = step(state, b, jax.random.PRNGKey(1))
  assert np.isfinite(m["loss"]) and state["params"] is not None
  assert all(
    x.dtype == jnp.float32
    for x in jax.tree.leaves(state["params"])
    if jnp.issubdtype(x.dtype, jnp.floating)
  )


def test_unknown_dtype_is_named():
  with pytest.raises(ValueError, match=r"model.dtype must be one of .*'bfloat16'.* got 'fp8'"):
    dataclasses.replace(one_cell_spec(), dtype="fp8")
  assert precision.cast({"a": jnp.ones(2)}, jnp.float32)["a"].dtype == jnp.float32
