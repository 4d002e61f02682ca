"""Where XLA's CPU time goes in a dense 3x3 convolution: forward, input and filter gradient.

    python benchmarks/conv_grads.py [--batch 64] [--repeats 5]

ResNet-18's four stage shapes at 28x28 input (28x28x64 ... 4x4x512, stride 1, SAME), NHWC /
HWIO as flax's ``nn.Conv``: milliseconds per call of the jitted forward, the input gradient
and the filter gradient (each half of ``jax.vjp``), and of the filter gradient written as nine
shifted matmuls (the alternative a custom VJP would use). Prints one JSON line per shape.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DN = ("NHWC", "HWIO", "NHWC")
SHAPES = ((28, 64), (14, 128), (7, 256), (4, 512))


def ms(f, *args, repeats: int) -> float:
  jax.block_until_ready(f(*args))
  t = time.perf_counter()
  for _ in range(repeats):
    out = f(*args)
  jax.block_until_ready(out)
  return round((time.perf_counter() - t) / repeats * 1000, 1)


def conv(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=DN)


def filter_grad_shifted(x, g):
  """sum over batch and pixels of x[shifted by (i, j)]^T g, one matmul per kernel tap."""
  h, c = x.shape[1], x.shape[-1]
  xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  g2 = g.reshape(-1, g.shape[-1])
  taps = [[xp[:, i : i + h, j : j + h].reshape(-1, c).T @ g2 for j in range(3)] for i in range(3)]
  return jnp.stack([jnp.stack(row) for row in taps])


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--repeats", type=int, default=5)
  a = ap.parse_args(argv)
  rng = np.random.default_rng(0)
  for size, c in SHAPES:
    x = jnp.asarray(rng.random((a.batch, size, size, c)), jnp.float32)
    w = jnp.asarray(rng.random((3, 3, c, c)), jnp.float32)
    g = conv(x, w)
    dx = jax.jit(lambda g, x=x, w=w: jax.vjp(conv, x, w)[1](g)[0])
    dw = jax.jit(lambda g, x=x, w=w: jax.vjp(conv, x, w)[1](g)[1])
    shifted = jax.jit(filter_grad_shifted)
    err = float(jnp.abs(shifted(x, g) - dw(g)).max() / jnp.abs(dw(g)).max())
    row = {
      "shape": [a.batch, size, size, c],
      "forward_ms": ms(jax.jit(conv), x, w, repeats=a.repeats),
      "input_grad_ms": ms(dx, g, repeats=a.repeats),
      "filter_grad_ms": ms(dw, g, repeats=a.repeats),
      "filter_grad_shifted_ms": ms(shifted, x, g, repeats=a.repeats),
      "shifted_rel_err": float(f"{err:.1e}"),
      "device": jax.devices()[0].device_kind,
    }
    print(json.dumps(row), flush=True)
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
