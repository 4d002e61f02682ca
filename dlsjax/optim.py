"""Weight optimizers shared by the search and the training of the derived network."""

from __future__ import annotations

import math

import jax.numpy as jnp
import optax


def cosine_by_epoch(base: float, floor: float, epochs: int, steps_per_epoch: int):
  """Cosine annealing from ``base`` to ``floor``, stepped once per epoch.

  PyTorch's ``CosineAnnealingLR(T_max=epochs, eta_min=floor)`` called at the end of
  each epoch, as the DARTS code does.
  """

  def schedule(step):
    epoch = jnp.minimum(step // steps_per_epoch, epochs - 1)
    cos = 0.5 * (1.0 + jnp.cos(math.pi * epoch / epochs))
    return floor + (base - floor) * cos

  return schedule


def sgd(schedule, *, momentum: float, weight_decay: float, grad_clip: float):
  """SGD with momentum and coupled weight decay after gradient clipping, as DARTS."""
  return optax.chain(
    optax.clip_by_global_norm(grad_clip) if grad_clip else optax.identity(),
    optax.add_decayed_weights(weight_decay),
    optax.sgd(schedule, momentum=momentum),
  )
