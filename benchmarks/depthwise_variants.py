"""Compile and run time of the depthwise-convolution formulations, fwd+bwd.

    python benchmarks/depthwise_variants.py [--batch 4 --res 16 --channels 8 --edges 3]

For each implementation (``xla``: feature_group_count=C; ``dense``: block
diagonal kernel; ``toeplitz``: batched matmul with banded matrices, the CPU
default) it measures the op unbatched, under a vmap over edges with a
shared input ("rhs-only", the first layer of every op in the supernet) and
with a batched input ("both", the second block of a separable conv). One JSON
line per measurement.
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp

from dlsjax import layers


def measure(fn, *args, n=4):
  loss = lambda *a: sum((fn(*[x * (i + 1) for x in a]) ** 2).sum() for i in range(n))
  g = jax.jit(jax.grad(loss, argnums=tuple(range(len(args)))))
  t = time.perf_counter()
  compiled = g.lower(*args).compile()
  compile_s = (time.perf_counter() - t) / n
  jax.block_until_ready(compiled(*args))
  t = time.perf_counter()
  for _ in range(3):
    jax.block_until_ready(compiled(*args))
  return compile_s, (time.perf_counter() - t) / 3 / n


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=4)
  ap.add_argument("--res", type=int, default=16)
  ap.add_argument("--channels", type=int, default=8)
  ap.add_argument("--edges", type=int, default=3)
  ap.add_argument("--kernel", type=int, default=3)
  a = ap.parse_args()
  B, H, C, E, k = a.batch, a.res, a.channels, a.edges, a.kernel
  x = jnp.ones((B, H, H, C))
  xb = jnp.ones((E, B, H, H, C))
  w = jnp.ones((k, k, 1, C))
  wb = jnp.ones((E, k, k, 1, C))

  def dense(x_, w_):  # the block-diagonal dense kernel (lost; not in the library)
    return layers.conv(x_, w_[:, :, 0, :, None] * jnp.eye(x_.shape[-1], dtype=w_.dtype))

  for impl in ("xla", "dense", "toeplitz"):
    dw = (
      dense if impl == "dense" else (lambda x_, w_, i=impl: layers.depthwise_conv(x_, w_, impl=i))
    )
    cases = {
      "unbatched": (dw, x, w),
      "rhs_only": (lambda x_, w_, dw=dw: jax.vmap(lambda q: dw(x_, q))(w_), x, wb),
      "both": (lambda x_, w_, dw=dw: jax.vmap(dw)(x_, w_), xb, wb),
    }
    for case, (fn, *args) in cases.items():
      emit(impl, case, *measure(fn, *args), a)

  # Candidate for the batched-input case: fold the edge axis into channels and
  # run one dense convolution with a block-diagonal (E*C x E*C) kernel.
  def folded(x_, w_):
    xc = jnp.moveaxis(x_, 0, -2).reshape(B, H, H, E * C)
    wc = jnp.moveaxis(w_, 0, -2).reshape(k, k, 1, E * C)
    y = dense(xc, wc)
    return jnp.moveaxis(y.reshape(B, H, H, E, C), -2, 0)

  emit("dense_folded", "both", *measure(folded, xb, wb), a)


def emit(impl, case, compile_s, run_s, a):
  print(
    json.dumps(
      {
        "impl": impl,
        "case": case,
        "compile_s_per_op": round(compile_s, 3),
        "run_ms_per_op": round(1000 * run_s, 2),
        "batch": a.batch,
        "res": a.res,
        "channels": a.channels,
        "edges": a.edges,
        "kernel": a.kernel,
        "backend": jax.default_backend(),
      }
    ),
    flush=True,
  )


if __name__ == "__main__":
  main()
