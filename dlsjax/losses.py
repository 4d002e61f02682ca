"""Losses and metrics as pure functions of logits and targets."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def focal_loss(
  logits_BK: jax.Array,
  targets_BK: jax.Array,
  *,
  gamma: float = 2.0,
  alpha: float = 1.0,
  weights_B: jax.Array | None = None,
) -> jax.Array:
  """Focal loss (paper eq. 6, Lin et al. 2017), mean over the (weighted) batch.

  ``FL = -alpha * sum_k t_k (1 - p_k)^gamma log p_k`` with ``p = softmax(logits)``.
  For one-hot targets this is ``-alpha (1 - p_t)^gamma log p_t``; soft targets
  (CutMix) weight each class's term by its share. ``gamma = 0, alpha = 1`` is
  cross-entropy. ``weights_B`` (e.g. the padding mask of an evaluation batch)
  weights the per-example losses.
  """
  dtype = jnp.promote_types(logits_BK.dtype, jnp.float32)  # bf16 -> f32; f64 stays f64
  logp = jax.nn.log_softmax(logits_BK.astype(dtype), axis=-1)
  modulating = (1.0 - jnp.exp(logp)) ** gamma if gamma else 1.0
  per_example = -alpha * jnp.sum(targets_BK * modulating * logp, axis=-1)
  if weights_B is None:
    return per_example.mean()
  w = weights_B.astype(per_example.dtype)
  return jnp.sum(per_example * w) / jnp.maximum(w.sum(), 1.0)


def accuracy(logits_BK: jax.Array, labels_B: jax.Array, weights_B: jax.Array | None = None):
  correct = (jnp.argmax(logits_BK, -1) == labels_B).astype(jnp.float32)
  if weights_B is None:
    return correct.mean()
  w = weights_B.astype(jnp.float32)
  return jnp.sum(correct * w) / jnp.maximum(w.sum(), 1.0)
