"""Process-wide settings: the GPU GEMM flag respects what the user set; results do not depend
on the process-wide PRNG default."""

from dlsjax import runtime


def test_triton_gemm_flag_added_once_and_user_value_kept(monkeypatch):
  monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
  runtime._gpu_gemm_flag()
  runtime._gpu_gemm_flag()
  flags = runtime.os.environ["XLA_FLAGS"].split()
  assert flags == ["--xla_force_host_platform_device_count=4", runtime.TRITON_GEMM_FLAG]

  monkeypatch.setenv("XLA_FLAGS", "--xla_gpu_enable_triton_gemm=true")
  runtime._gpu_gemm_flag()
  assert runtime.os.environ["XLA_FLAGS"] == "--xla_gpu_enable_triton_gemm=true"

  monkeypatch.delenv("XLA_FLAGS")
  runtime._gpu_gemm_flag()
  assert runtime.os.environ["XLA_FLAGS"] == runtime.TRITON_GEMM_FLAG


def test_library_results_do_not_depend_on_the_process_prng_default():
  """What a search draws (initial weights and alphas, DropPath in a step) comes from keys that
  dlsjax chooses itself (``dlsjax.rng``): the same numbers under JAX's default threefry and
  with ``jax_default_prng_impl=rbg`` (what ``runtime.setup`` used to set)."""
  import jax
  import numpy as np
  from bilevel_test import batch
  from conftest import one_cell_spec

  from dlsjax import bilevel, rng

  spec = one_cell_spec()
  h = bilevel.SearchHParams(steps_per_epoch=2, w_lr=0.05, alpha_lr=0.01, drop_path=0.3)
  train_b, val_b = batch(spec, 4, 0), batch(spec, 4, 1)

  def run():
    state = bilevel.init_state(spec, h, rng.key(0))
    step = jax.jit(bilevel.make_search_step(spec, h, axis_name=None))
    state, metrics = step(state, train_b, val_b, rng.data(1))
    return jax.device_get((state["params"], state["alphas"], metrics))

  default = jax.config.jax_default_prng_impl
  assert default == "threefry2x32"  # nothing in the test setup changed it
  a = run()
  jax.config.update("jax_default_prng_impl", "rbg")
  try:
    b = run()
  finally:
    jax.config.update("jax_default_prng_impl", default)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)
  # DropPath fired with the step's key: another key gives other weights.
  state = bilevel.init_state(spec, h, rng.key(0))
  step = jax.jit(bilevel.make_search_step(spec, h, axis_name=None))
  other = jax.device_get(step(state, train_b, val_b, rng.data(2))[0]["params"])
  pairs = zip(jax.tree.leaves(a[0]), jax.tree.leaves(other), strict=True)
  assert any(not np.array_equal(x, y) for x, y in pairs)
