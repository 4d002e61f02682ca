"""Grad-CAM (Selvaraju et al. 2017) of the derived network's last cell (paper Fig. 4).

The class score's gradient w.r.t. the last cell's output map ``A`` (via
Flax's ``perturb``) is averaged over positions to weight ``A``'s channels;
``relu(sum_k w_k A_k)``, scaled to [0, 1] and resized bilinearly to the input
resolution, is the heatmap.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np


def make_gradcam(model):
  """``gradcam(variables, images, target=None) -> (heatmap [H, W], probs [K], class)``.

  One compiled function for every specimen of the same shape. ``images``:
  ``{modality: [1, H, W, C]}``; ``target`` defaults to the predicted class.
  """

  def forward(base, images, perturbations):
    logits, state = model.apply(
      {**base, "perturbations": perturbations}, images, train=False, mutable=["intermediates"]
    )
    return logits[0], state["intermediates"]["features"][0]

  @jax.jit
  def run(base, images, target):
    shape = jax.eval_shape(lambda: forward(base, images, {"features": jnp.zeros((1, 1, 1, 1))}))[1]
    zeros = {"features": jnp.zeros(shape.shape, shape.dtype)}
    (logits, feats), vjp = jax.vjp(lambda p: forward(base, images, p), zeros)
    cls = jnp.where(target < 0, jnp.argmax(logits), target)
    (grads,) = vjp(
      (jax.nn.one_hot(cls, logits.shape[0], dtype=logits.dtype), jnp.zeros_like(feats))
    )
    weights = grads["features"][0].mean(axis=(0, 1))  # [C]
    cam = jax.nn.relu(jnp.einsum("hwc,c->hw", feats[0], weights))
    cam = cam / jnp.maximum(cam.max(), 1e-12)
    h, w = next(iter(images.values())).shape[1:3]
    return jax.image.resize(cam, (h, w), "bilinear"), jax.nn.softmax(logits), cls

  def gradcam(variables, images, target: int | None = None):
    base = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
    heat, probs, cls = run(base, images, jnp.int32(-1 if target is None else target))
    heat = np.asarray(heat)
    heat = (heat - heat.min()) / max(float(heat.max() - heat.min()), 1e-12)
    return heat, np.asarray(probs), int(cls)

  return gradcam
