"""Mixed precision: compute in ``model.dtype``, keep everything that is stored in float32.

With ``model.dtype="bfloat16"`` the forward and backward passes run in bfloat16
(the parameters, images, alphas and masks are cast at the model's entry, the
logits cast back to float32 at its exit), while the parameters themselves, the
alphas, the optimiser states and the BatchNorm running statistics stay float32:
the gradient of a cast is the cast of the gradient, so the optimisers update
float32 values. BatchNorm computes its batch statistics in float32
(``layers.BatchNorm``). ``float32`` (the default) changes nothing.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


def compute_dtype(name: str):
  """The dtype of ``model.dtype`` (a name), with an error naming the field."""
  try:
    return DTYPES[str(name)]
  except KeyError:
    raise ValueError(f"model.dtype must be one of {sorted(DTYPES)}, got {name!r}") from None


def cast(tree, dtype):
  """Floating leaves of ``tree`` in ``dtype`` (others untouched); identity for float32."""
  if dtype == jnp.float32:
    return tree
  return jax.tree.map(
    lambda x: x.astype(dtype) if jnp.issubdtype(jnp.result_type(x), jnp.floating) else x, tree
  )
