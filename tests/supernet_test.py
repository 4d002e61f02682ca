import dataclasses
import functools

import chex
import flax.linen as nn
import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import PAPER_MODALITIES, cells_only_spec, one_cell_spec, tiny_spec

from dlsjax import cells, netspec, supernet
from dlsjax.cells import MixedDAG, OpCall, edge_slot, search_param_name
from dlsjax.configs import get_config
from dlsjax.layers import OpContext
from dlsjax.network import Network, Part
from dlsjax.topology import Topology


def random_images(spec, batch=2, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), len(spec.modalities))
  r = spec.resolution
  return {
    m.name: jax.random.normal(k, (batch, r, r, m.channels))
    for k, m in zip(keys, spec.modalities, strict=True)
  }


def module_outputs(spec, batch=2):
  """Shapes of every stem / cell output via eval_shape (nothing is compiled)."""

  def run():
    model = supernet.make_supernet(spec)
    images = supernet.dummy_images(spec, batch)
    alphas = supernet.init_alphas(spec, jax.random.PRNGKey(0))
    masks = supernet.init_masks(spec)
    v = model.init(jax.random.PRNGKey(0), images, alphas, masks, train=True)
    _, state = model.apply(
      v,
      images,
      alphas,
      masks,
      train=True,
      capture_intermediates=True,
      mutable=["intermediates", "batch_stats"],
    )
    return {
      k: v["__call__"][0]
      for k, v in state["intermediates"].items()
      if isinstance(v, dict) and "__call__" in v
    }

  return jax.eval_shape(run)


@pytest.mark.parametrize("phase,c_sin", [("search", 48), ("train", 144)])
def test_paper_config_shapes(phase, c_sin):
  cfg = get_config("paper")
  spec = netspec.spec_from_config(cfg.model, phase=phase)
  assert spec.c_sin == c_sin
  assert spec.stem_channels("fusing") == spec.stem_channels("fl") == 2 * c_sin  # C_sout = 2 * C_sin
  assert spec.cells == ("reduce", "normal") * 3  # L = 3 (K + 1), reduction first
  out = module_outputs(spec)
  for m in ("WL", "NIR1", "NIR2"):
    chex.assert_shape(out[f"stem_{m}"], (2, 64, 64, c_sin))
  chex.assert_shape(out["fusing_stem"], (2, 64, 64, 2 * c_sin))
  chex.assert_shape(out["fl_stem"], (2, 64, 64, 2 * c_sin))
  c = spec.cell_channels
  expected = [(32, 2 * c), (32, 2 * c), (16, 4 * c), (16, 4 * c), (8, 8 * c), (8, 8 * c)]
  for i, (res, node_c) in enumerate(expected):
    chex.assert_shape(out[f"cell{i}"], (2, res, res, 3 * node_c))  # 3 inner nodes concat


def test_paper_topologies_and_alphas():
  spec = netspec.spec_from_config(get_config("paper").model)
  t = spec.topologies()
  assert list(t) == ["fusing", "fl", "normal", "reduce"]
  assert (t["fusing"].n_inputs, t["fusing"].n_inner, t["fusing"].num_edges) == (3, 2, 7)
  assert (t["fl"].n_inputs, t["fl"].n_inner, t["fl"].num_edges) == (2, 2, 5)
  assert (t["normal"].n_inputs, t["normal"].n_inner, t["normal"].num_edges) == (2, 3, 9)
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(0))
  assert {p: a.shape for p, a in alphas.items()} == {
    "fusing": (7, 10),
    "fl": (5, 10),
    "normal": (9, 10),
    "reduce": (9, 10),
  }
  assert float(jnp.abs(alphas["normal"]).max()) < 1e-2  # 1e-3 * N(0, 1)


def test_darts_edge_numbering():
  t = Topology(2, 4)
  assert [t.node_edges(j) for j in range(4)] == [
    (0, 1),
    (2, 3, 4),
    (5, 6, 7, 8),
    (9, 10, 11, 12, 13),
  ]
  assert t.edges[5:9] == ((0, 4), (1, 4), (2, 4), (3, 4))


def test_fl_stem_feeds_the_first_two_cells():
  spec = tiny_spec(cells=("reduce", "normal", "reduce"))
  captured = {}

  def interceptor(next_fun, args, kwargs, context):
    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, Part):
      captured[context.module.name] = (args[0], out)
    return out

  def run():
    model = supernet.make_supernet(spec)
    images = supernet.dummy_images(spec, 2)
    alphas = supernet.init_alphas(spec, jax.random.PRNGKey(0))
    masks = supernet.init_masks(spec)
    v = model.init(jax.random.PRNGKey(0), images, alphas, masks, train=True)
    with nn.intercept_methods(interceptor):
      model.apply(v, images, alphas, masks, train=True, mutable=["batch_stats"])
      fl_out = captured["fl_stem"][1]
      fusing_out = captured["fusing_stem"][1]
      (c0_s0, c0_s1), c0_out = captured["cell0"]
      (c1_s0, c1_s1), c1_out = captured["cell1"]
      (c2_s0, c2_s1), _ = captured["cell2"]
      assert c0_s0 is fl_out and c0_s1 is fusing_out
      assert c1_s0 is fl_out and c1_s1 is c0_out
      assert c2_s0 is c0_out and c2_s1 is c1_out
    return 0

  jax.eval_shape(run)  # traced only: nothing is compiled


def test_wl_only_omits_fl_stem_and_logs(caplog):
  spec = tiny_spec(modalities=PAPER_MODALITIES[:1])
  assert "fl" not in spec.topologies()
  with caplog.at_level("INFO"):
    spec.log_structure()
  assert "FL Stem is omitted" in caplog.text
  v = jax.eval_shape(lambda: supernet.init(spec, jax.random.PRNGKey(0)))
  assert "fl_stem" not in v["params"]
  out = jax.eval_shape(
    lambda v: supernet.apply(
      v,
      random_images(spec),
      supernet.init_alphas(spec, jax.random.PRNGKey(1)),
      supernet.init_masks(spec),
      spec=spec,
      train=True,
    )[0],
    v,
  )
  chex.assert_shape(out, (2, 4))


@pytest.mark.parametrize(
  "fusing,fl", [("concat", "learnable"), ("learnable", "concat"), ("concat", "concat")]
)
def test_stem_ablations(fusing, fl):
  spec = tiny_spec(stems={"fusing": fusing, "fl": fl})
  parts = spec.topologies()
  assert ("fusing" in parts) == (fusing == "learnable")
  assert ("fl" in parts) == (fl == "learnable")
  shapes = jax.eval_shape(lambda: supernet.init(spec, jax.random.PRNGKey(0)))
  for name, kind in (("fusing_stem", fusing), ("fl_stem", fl)):
    if kind == "concat":
      # Stem inputs are concatenated and a 1x1 conv keeps the channel count C_sout.
      n_in = 3 if name == "fusing_stem" else 2
      assert shapes["params"][name]["kernel"].shape == (n_in * spec.c_sin, 2 * spec.c_sin)
  out = module_outputs(spec)
  chex.assert_shape(out["cell0"], (2, 4, 4, 3 * 2 * spec.cell_channels))


def test_bad_images_are_rejected():
  spec = tiny_spec()
  v = jax.eval_shape(lambda: supernet.init(spec, jax.random.PRNGKey(0)))
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(0))
  masks = supernet.init_masks(spec)
  imgs = supernet.dummy_images(spec, 2)
  run = lambda i: jax.eval_shape(
    lambda v: supernet.apply(v, i, alphas, masks, spec=spec, train=True), v
  )
  with pytest.raises(ValueError, match="missing modality 'NIR2'"):
    run({k: x for k, x in imgs.items() if k != "NIR2"})
  bad = dict(imgs, NIR1=jnp.zeros((2, 8, 8, 1)))
  with pytest.raises(ValueError, match="modality 'NIR1'"):
    run(bad)
  bad = dict(imgs, NIR1=jnp.zeros((2, 6, 6, 3)))
  with pytest.raises(ValueError, match="mismatched"):
    run(bad)


def dag_setup(C=4, seed=0):
  topo = Topology(2, 3)
  op_set = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "nor_conv_3x3")
  ctx = OpContext(train=True)
  dag = MixedDAG(topo, op_set, C, False, ctx)
  xs = [jax.random.normal(jax.random.PRNGKey(seed + i), (2, 6, 6, C)) for i in range(2)]
  w = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(9), (topo.num_edges, len(op_set))))
  v = jax.jit(dag.init)(jax.random.PRNGKey(seed), xs, w)
  return topo, op_set, ctx, dag, xs, w, v


def test_masking_one_op_removes_exactly_its_contribution():
  topo, op_set, ctx, dag, xs, w, v = dag_setup()
  e, k = 1, op_set.index("sep_conv_3x3")  # edge 1: input node 1 -> first inner node
  w_masked = w.at[e, k].set(0.0)
  run = jax.jit(lambda w: dag.apply(v, xs, w))
  full, masked = run(w), run(w_masked)
  # The op's own output, from its slice of the stacked parameters.
  source = topo.edges[e][0]
  r, t, j = edge_slot(topo, False, e)
  key = search_param_name(r, "sep_conv_3x3")
  one = {c: jax.tree.map(lambda a: a[t, j], v[c][key]) for c in ("params", "batch_stats")}
  op_out = jax.jit(OpCall("sep_conv_3x3", 4, 1, ctx).apply)(one, xs[source])
  np.testing.assert_allclose(full[0] - masked[0], w[e, k] * op_out, atol=1e-5)
  # Downstream nodes change, but no other op's contribution to node 0 does.
  assert not np.allclose(full[1], masked[1])


def test_reduction_cell_equals_edge_by_edge_and_skips_dead_slots():
  """A reduction DAG equals the sum over its edges of each op applied with its own slice of
  the stacked parameters; its stride-1 run (inner sources) evaluates only the target slots
  they reach, and the dead slot's BN statistics keep their value."""
  C = 4
  topo = Topology(2, 3)
  op_set = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "nor_conv_3x3")
  ctx = OpContext(train=True)
  dag = MixedDAG(topo, op_set, C, True, ctx)
  xs = [jax.random.normal(jax.random.PRNGKey(i), (2, 8, 8, C)) for i in range(2)]
  w = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(9), (topo.num_edges, len(op_set))))
  v = jax.jit(dag.init)(jax.random.PRNGKey(0), xs, w)
  out, upd = jax.jit(lambda v, w: dag.apply(v, xs, w, mutable=["batch_stats"]))(v, w)
  nodes = list(xs)
  for j in range(topo.n_inner):
    total = 0.0
    for e in topo.node_edges(j):
      source = topo.edges[e][0]
      stride = 2 if source < topo.n_inputs else 1
      r, t, slot = edge_slot(topo, True, e)
      for k, name in enumerate(op_set):
        if name == "none":
          continue
        key = search_param_name(r, name)
        one = {c: jax.tree.map(lambda a, t=t, slot=slot: a[t, slot], v[c].get(key, {})) for c in v}
        total = total + w[e, k] * OpCall(name, C, stride, ctx).apply(one, nodes[source])
    nodes.append(total)
  for j in range(topo.n_inner):
    np.testing.assert_allclose(out[j], nodes[topo.n_inputs + j], atol=1e-4)
  # Run 1 holds the inner sources 2 and 3; neither reaches slot 0 (inner node 2).
  key = search_param_name(1, "nor_conv_3x3")
  new, old = (jax.tree.leaves(s["batch_stats"][key]) for s in (upd, v))
  assert new and all(np.array_equal(a[:, 0], b[:, 0]) for a, b in zip(new, old, strict=True))
  assert not any(np.allclose(a[:, 1:], b[:, 1:]) for a, b in zip(new, old, strict=True))
  sizes = _conv_sizes(lambda w: dag.apply(v, xs, w, mutable=["batch_stats"])[0], w)
  # nor_conv_3x3 (one dense conv over the stacked slots): 3 slots at stride 2, 2 after.
  assert (2, 3 * C) in sizes and (2, 2 * C) in sizes and len(set(sizes)) == 2


def test_gradients_reach_every_alpha():
  # Both learnable stems and both cell kinds; four ops (a zero, a pooling, the identity
  # and a conv) keep the compile short: every op's alpha is reached through the same mixing.
  spec = tiny_spec(op_set=("none", "avg_pool_3x3", "skip_connect", "sep_conv_3x3"))
  v = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(1))
  masks = supernet.init_masks(spec)
  images = random_images(spec, batch=4)
  labels = jnp.array([0, 1, 2, 3])

  def loss(a):
    logits, _ = supernet.apply(v, images, a, masks, spec=spec, train=True)
    return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(4), labels])

  grads = jax.jit(jax.grad(loss))(alphas)
  for p, g in grads.items():
    assert g.shape == alphas[p].shape
    assert np.all(np.abs(np.asarray(g)) > 0), f"part {p} has alphas without gradient"


def test_jit_apply_equals_apply():
  spec = one_cell_spec()  # eager execution compiles op by op: the smallest network
  v = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(1))
  masks = supernet.init_masks(spec)
  images = random_images(spec)
  rngs = {"dropout": jax.random.PRNGKey(5)}
  f = lambda v, i, a, m: supernet.apply(v, i, a, m, spec=spec, train=True, rngs=rngs, drop_prob=0.2)
  eager = f(v, images, alphas, masks)
  jitted = jax.jit(f)(v, images, alphas, masks)
  chex.assert_trees_all_close(eager, jitted, atol=1e-5, rtol=1e-5)

  # Eval mode uses running statistics and no DropPath: a DropPath key and rate change
  # nothing, and the result is not training mode's (batch statistics).
  def g(rngs, p):
    run = lambda v, i, a, m: supernet.apply(
      v, i, a, m, spec=spec, train=False, rngs=rngs, drop_prob=p
    )[0]
    return jax.jit(run)(v, images, alphas, masks)

  plain = g(None, 0.0)
  np.testing.assert_array_equal(g(rngs, 0.5), plain)
  assert not np.allclose(plain, eager[0], atol=1e-3)


def test_masks_are_traced_arguments():
  """Changing masks (op removal, decided edges) never recompiles."""
  spec = cells_only_spec()  # both cell kinds; the stems' masks work alike (tested in derive)
  v = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(1))
  images = random_images(spec)
  traces = []

  @jax.jit
  def f(m):
    traces.append(1)
    return supernet.apply(v, images, alphas, m, spec=spec, train=True, update_stats=False)[0]

  m0 = supernet.init_masks(spec)
  outs = [f(m0)]
  m1 = jax.tree.map(lambda x: x, m0)
  conv = spec.op_set.index("sep_conv_3x3")
  m1["normal"]["op"] = m1["normal"]["op"].at[0, conv].set(0.0)
  outs.append(f(m1))
  m2 = jax.tree.map(lambda x: x, m1)
  m2["reduce"]["decided"] = m2["reduce"]["decided"].at[2].set(1.0)
  m2["reduce"]["op"] = m2["reduce"]["op"].at[2].set(jax.nn.one_hot(conv, len(spec.op_set)))
  outs.append(f(m2))
  assert len(traces) == 1
  assert not np.allclose(outs[0], outs[1]) and not np.allclose(outs[1], outs[2])


def test_drop_path_is_per_sample_and_off_in_eval():
  topo, op_set, ctx, dag, xs, w, v = dag_setup()
  dp = MixedDAG(topo, op_set, 4, False, ctx, drop_path=True)
  run = jax.jit(lambda p, key, xs: dp.apply(v, xs, w, p, rngs={"dropout": key}))
  a = run(0.5, jax.random.PRNGKey(0), xs)
  b = run(0.5, jax.random.PRNGKey(1), xs)
  c = run(0.0, jax.random.PRNGKey(1), xs)
  assert not np.allclose(a[0], b[0])
  np.testing.assert_allclose(c[0], jax.jit(lambda: dag.apply(v, xs, w))()[0], atol=1e-6)
  # Per sample: eight copies of one example come out different (one mask per batch would
  # treat them alike).
  same = [jnp.broadcast_to(x[:1], (8, *x.shape[1:])) for x in xs]
  out = np.asarray(run(0.5, jax.random.PRNGKey(2), same)[-1])
  assert len({out[i].tobytes() for i in range(8)}) > 1
  # The supernet turns it off outside training, whatever the rate and key.
  spec = cells_only_spec()
  sv = supernet.init(spec, jax.random.PRNGKey(0))
  alphas, masks = supernet.init_alphas(spec, jax.random.PRNGKey(1)), supernet.init_masks(spec)
  images = random_images(spec)

  def net(train, p, key):
    f = lambda: supernet.apply(
      sv, images, alphas, masks, spec=spec, train=train, drop_prob=p,
      rngs=None if key is None else {"dropout": key}, update_stats=False,
    )[0]  # fmt: skip
    return np.asarray(jax.jit(f)())

  np.testing.assert_array_equal(net(False, 0.5, jax.random.PRNGKey(3)), net(False, 0.0, None))
  assert not np.allclose(net(True, 0.5, jax.random.PRNGKey(3)), net(True, 0.0, None))


@pytest.mark.parametrize("reduction", [False, True])
def test_dag_layout_and_remat_keep_values_gradients_and_statistics(reduction):
  """CNHW + rematerialised scan body (the CPU default) = NHWC without remat, exactly
  up to float rounding: outputs, gradients w.r.t. weights and mixing weights, BN updates."""
  op_set = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")
  op_set += ("dil_conv_3x3", "nor_conv_3x3")
  ctx = OpContext(train=True)
  topo = Topology(2, 3, concat_last=not reduction)  # the stems' concatenating last node too
  xs = [jax.random.normal(jax.random.PRNGKey(i), (2, 6, 6, 4)) for i in range(2)]
  w = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(9), (topo.num_edges, len(op_set))))

  def run(layout, remat):
    dag = MixedDAG(topo, op_set, 4, reduction, ctx, drop_path=True, remat=remat, layout=layout)
    v = jax.jit(dag.init)(jax.random.PRNGKey(0), xs, w)
    rngs = {"dropout": jax.random.PRNGKey(4)}

    def loss(params, w):
      vv = {"params": params, "batch_stats": v["batch_stats"]}
      out, st = dag.apply(vv, xs, w, 0.3, rngs=rngs, mutable=["batch_stats"])
      return sum(jnp.sum(o * jnp.cos(o)) for o in out), (out, st)

    grads, (out, st) = jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(v["params"], w)
    return out, grads, st

  ref = run("NHWC", False)
  got = run("CNHW", True)
  chex.assert_trees_all_close(got, ref, atol=1e-4, rtol=2e-4)
  # A pooling op runs once per source; every target slot gets its statistics.
  stride = 2 if reduction else 1
  pool = ref[2]["batch_stats"][search_param_name(0, "max_pool_3x3")]
  for t in range(2):
    _, own = OpCall("max_pool_3x3", 4, stride, ctx).init_with_output(jax.random.PRNGKey(0), xs[t])
    _, upd = OpCall("max_pool_3x3", 4, stride, ctx).apply(own, xs[t], mutable=["batch_stats"])
    for j in range(topo.n_inner):
      slot = jax.tree.map(lambda a, t=t, j=j: a[t, j], pool)
      chex.assert_trees_all_close(slot, upd["batch_stats"], atol=1e-6)


@pytest.mark.parametrize("schedule", ["source", "edge"])
def test_dag_remat_keeps_the_max_pool_tap(schedule, capsys):
  """The rematerialised scan body saves, per step, its input node and max pooling's int8
  first-maximum index for the backward pass (recomputed there, that index made the
  gradient's fused loop 8x slower) and no other float array (only integer indices besides)."""
  from jax.ad_checkpoint import print_saved_residuals

  op_set = ("none", "max_pool_3x3", "sep_conv_3x3")
  topo = Topology(2, 2)
  xs = [jax.random.normal(jax.random.PRNGKey(i), (2, 6, 6, 4)) for i in range(2)]
  w = jnp.ones((topo.num_edges, len(op_set)))
  ctx = OpContext(train=True)
  dag = MixedDAG(topo, op_set, 4, False, ctx, remat=True, layout="CNHW", schedule=schedule)
  v = jax.jit(dag.init)(jax.random.PRNGKey(0), xs, w)
  loss = lambda p, xs: sum(jnp.sum(o) for o in dag.apply({**v, "params": p}, xs, w))
  print_saved_residuals(loss, v["params"], xs)
  from_scans = [line for line in capsys.readouterr().out.splitlines() if "output of scan" in line]
  n_scans = {"source": 1, "edge": 2}[schedule]
  node = "4,2,6,6]"  # [steps, C, B, H, W]
  assert sum(line.startswith("i8[") and node in line for line in from_scans) == n_scans
  assert sum(line.startswith("f32[") and node in line for line in from_scans) == n_scans
  assert all(line.startswith(("i8[", "f32[", "i32[")) for line in from_scans)
  assert not [line for line in from_scans if line.startswith("f32[") and node not in line]


def test_dag_layout_auto_and_errors():
  spec = tiny_spec()
  assert spec.dag_layout == "auto" and spec.resolved_dag_layout() == "CNHW"  # CPU, built-in ops
  assert tiny_spec(dag_layout="NHWC").resolved_dag_layout() == "NHWC"
  with pytest.raises(ValueError, match="dag_layout must be one of"):
    tiny_spec(dag_layout="NCHW")


def test_weighted_fan_out_gradient():
  from dlsjax.cells import weighted_fan_out

  y = jax.random.normal(jax.random.PRNGKey(0), (4, 3, 5, 5))  # CNHW node
  c = jax.random.normal(jax.random.PRNGKey(1), (2, 3))  # [J, B]
  g = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 3, 5, 5))
  plain = lambda y, c: jnp.sum(c[:, None, :, None, None] * y[None] * g)
  fused = lambda y, c: jnp.sum(weighted_fan_out(y, c, "CNHW") * g)
  chex.assert_trees_all_close(
    jax.grad(fused, (0, 1))(y, c), jax.grad(plain, (0, 1))(y, c), atol=1e-5
  )
  # Forward over reverse (the second-order search step's Hessian-vector products).
  hvp = lambda f: jax.jvp(jax.grad(f, (0, 1)), (y, c), (y, c))[1]
  chex.assert_trees_all_close(hvp(fused), hvp(plain), atol=1e-4)


def test_dag_remat_option():
  cfg = get_config("paper")
  assert netspec.spec_from_config(cfg.model).resolved_dag_remat()  # auto: on on CPU
  cfg.model.dag_remat = "off"
  assert not netspec.spec_from_config(cfg.model).resolved_dag_remat()
  cfg.model.dag_remat = "sometimes"
  with pytest.raises(ValueError, match="dag_remat must be"):
    netspec.spec_from_config(cfg.model)


def _equations(fn, *args):
  """Every equation of ``fn``'s jaxpr and of its sub-jaxprs, in order."""

  def walk(jaxpr):
    for eqn in jaxpr.eqns:
      yield eqn
      for sub in jax.extend.core.jaxprs_in_params(eqn.params):
        yield from walk(sub)

  return list(walk(jax.make_jaxpr(fn)(*args).jaxpr))


def _conv_sizes(fn, *args):
  """``(batch size, output features)`` of every convolution in ``fn``'s jaxpr (sub-jaxprs too)."""
  sizes = []
  for eqn in _equations(fn, *args):
    if eqn.primitive.name == "conv_general_dilated":
      dims = eqn.params["dimension_numbers"]
      n = eqn.invars[0].aval.shape[dims.lhs_spec[0]]
      sizes.append((n, eqn.invars[1].aval.shape[dims.rhs_spec[0]]))
  return sizes


def _scan_lengths(fn, *args):
  """The ``length`` of every ``lax.scan`` in ``fn``'s jaxpr (sub-jaxprs too), in order."""
  return [e.params["length"] for e in _equations(fn, *args) if e.primitive.name == "scan"]


@pytest.mark.parametrize("reduction,concat_last", [(False, False), (True, False), (False, True)])
def test_edge_schedule_keeps_values_gradients_and_statistics(reduction, concat_last):
  """``schedule="edge"`` (the CPU default) = ``"source"``: outputs, gradients w.r.t. weights
  and mixing weights, BN updates of every real edge; it evaluates each real edge once
  (no dead slot), and the dead slots' statistics keep their value."""
  op_set = ("none", "max_pool_3x3", "avg_pool_3x3", "skip_connect", "sep_conv_3x3")
  op_set += ("dil_conv_3x3", "nor_conv_3x3")
  ctx = OpContext(train=True)
  C = 4
  topo = Topology(2, 3, concat_last=concat_last)
  xs = [jax.random.normal(jax.random.PRNGKey(i), (2, 8, 8, C)) for i in range(2)]
  w = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(9), (topo.num_edges, len(op_set))))
  dags = {
    s: MixedDAG(topo, op_set, C, reduction, ctx, drop_path=True, remat=True, layout="CNHW",
                schedule=s)
    for s in ("source", "edge")
  }  # fmt: skip
  v = jax.jit(dags["source"].init)(jax.random.PRNGKey(0), xs, w)
  rngs = {"dropout": jax.random.PRNGKey(4)}

  def run(dag):
    def loss(params, w):
      vv = {"params": params, "batch_stats": v["batch_stats"]}
      out, st = dag.apply(vv, xs, w, 0.3, rngs=rngs, mutable=["batch_stats"])
      return sum(jnp.sum(o * jnp.cos(o)) for o in out), (out, st)

    return jax.jit(jax.grad(loss, argnums=(0, 1), has_aux=True))(v["params"], w)

  (g_src, (out_src, st_src)), (g_edge, (out_edge, st_edge)) = run(dags["source"]), run(dags["edge"])
  chex.assert_trees_all_close(out_edge, out_src, atol=1e-4, rtol=2e-4)
  chex.assert_trees_all_close(g_edge, g_src, atol=1e-4, rtol=2e-4)
  # BN statistics: a real edge's as in "source"; a dead slot of the per-edge scan keeps
  # its old value (the "source" schedule writes zero-weight statistics there).
  real = cells._slot_edges(topo) >= 0  # [source, target slot]
  visited = set()
  for r, (t0, _, _) in enumerate(cells.segments(topo, reduction)):
    for name in op_set:
      key = search_param_name(r, name)
      if key not in st_edge["batch_stats"]:
        continue
      visited.add(key)
      trees = (st_edge["batch_stats"][key], st_src["batch_stats"][key], v["batch_stats"][key])
      for leaf_new, leaf_src, leaf_old in zip(*map(jax.tree.leaves, trees), strict=True):
        for t in range(leaf_new.shape[0]):
          for j in range(topo.n_inner):
            want = leaf_src[t, j] if real[t0 + t, j] else leaf_old[t, j]
            np.testing.assert_allclose(leaf_new[t, j], want, atol=1e-5, err_msg=f"{key} {t} {j}")
  assert visited and visited == set(st_edge["batch_stats"]) == set(st_src["batch_stats"])

  # Exactly the real edges are evaluated: the inner sources' 3 edges one per step.
  def fwd(dag):
    return lambda w: dag.apply(v, xs, w, 0.3, rngs=rngs, mutable=["batch_stats"])[0]

  assert _scan_lengths(fwd(dags["edge"]), w) == [2, 3]
  sizes = _conv_sizes(fwd(dags["edge"]), w)
  assert set(sizes) == {(2, 3 * C), (2, C)}  # inputs: 3 slots at once; inner: one edge
  assert _scan_lengths(fwd(dags["source"]), w) == ([2, 2] if reduction else [4])


def test_dag_schedule_option():
  cfg = get_config("paper")
  spec = netspec.spec_from_config(cfg.model)
  assert spec.dag_schedule == "auto" and spec.resolved_dag_schedule() == "edge"  # CPU
  cfg.model.dag_schedule = "source"
  assert netspec.spec_from_config(cfg.model).resolved_dag_schedule() == "source"
  cfg.model.dag_schedule = "target"
  with pytest.raises(ValueError, match="dag_schedule must be one of"):
    netspec.spec_from_config(cfg.model)
  with pytest.raises(ValueError, match="schedule must be one of"):
    cells._scans(0, 3, 1, 2, False, "target")


def test_split_inputs_keeps_values_and_leaves_input_ops_out_of_a_mask_vmap():
  """``split_inputs`` (the derivation's stems): the same outputs and BN updates, and under a
  vmap over mixing weights the convolutions on the inputs run once, unbatched."""
  op_set = ("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "nor_conv_3x3")
  ctx = OpContext(train=True)
  topo = Topology(3, 2, concat_last=True)  # the Fusing Stem's DAG
  xs = [jax.random.normal(jax.random.PRNGKey(i), (2, 6, 6, 4)) for i in range(3)]
  w = jax.nn.softmax(jax.random.normal(jax.random.PRNGKey(9), (topo.num_edges, len(op_set))))
  dags = {s: MixedDAG(topo, op_set, 4, False, ctx, split_inputs=s) for s in (False, True)}
  v = jax.jit(dags[False].init)(jax.random.PRNGKey(0), xs, w)
  out = {
    s: jax.jit(lambda v, w, d=d: d.apply(v, xs, w, mutable=["batch_stats"]))(v, w)
    for s, d in dags.items()
  }
  chex.assert_trees_all_close(out[True][0], out[False][0], atol=1e-5)
  # BN updates: the same on every live slot. The dead slot of the inner source (node 0 ->
  # slot of node 0: source 3, slot 0) is skipped by the split scan and keeps its value.
  dead = lambda t, keep: jax.tree.map(lambda a, k: a.at[3, 0].set(k[3, 0]), t, keep)
  old = v["batch_stats"]
  chex.assert_trees_all_close(out[True][1]["batch_stats"], dead(out[False][1]["batch_stats"], old),
                              atol=1e-5)  # fmt: skip
  ws = jnp.stack([w, w * 0.5, w[::-1]])  # 3 candidates

  def vmapped(d):
    return lambda ws: jax.vmap(lambda w: d.apply(v, xs, w, mutable=["batch_stats"])[0])(ws)

  plain, split = (_conv_sizes(vmapped(dags[s]), ws) for s in (False, True))
  assert plain and all(n == 3 * 2 for n, _ in plain)  # every conv once per candidate
  # The inputs' convs run unbatched for both target slots (2 x 4 features); the inner
  # node's run per candidate, for the one slot it reaches (its dead slot is skipped).
  assert set(split) == {(2, 2 * 4), (3 * 2, 4)}


def test_network_stages_compose_to_the_whole_network():
  spec = tiny_spec()
  model = supernet.make_supernet(spec)
  v = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = jax.tree.map(lambda a: a * 300, supernet.init_alphas(spec, jax.random.PRNGKey(1)))
  masks = supernet.init_masks(spec)
  images = random_images(spec, 2)

  def run(**kw):
    return model.apply(v, images if kw.get("stage") != "cells" else None, alphas, masks,
                       train=True, **kw)  # fmt: skip

  whole = run()
  stems = run(stage="stems")
  assert set(stems) == {"fusing", "fl"}
  np.testing.assert_array_equal(run(stage="fusing"), stems["fusing"])
  np.testing.assert_array_equal(run(stage="fl"), stems["fl"])
  np.testing.assert_allclose(run(stage="cells", stem_features=stems), whole, atol=1e-6)
  # The cells stage needs no stem masks.
  cell_masks = {p: masks[p] for p in ("normal", "reduce")}
  np.testing.assert_allclose(
    model.apply(v, None, alphas, cell_masks, train=True, stage="cells", stem_features=stems),
    whole,
    atol=1e-6,
  )
  with pytest.raises(ValueError, match="stage must be one of"):
    run(stage="head")
  with pytest.raises(ValueError, match="stem_features"):
    run(stage="cells")


@pytest.mark.heavy
@pytest.mark.parametrize(
  "cells_,runs",
  [
    (("normal", "normal", "normal", "reduce", "normal", "normal"), {0: 3, 4: 2}),
    (("reduce", "normal", "normal", "normal"), {1: 3}),
  ],
)
def test_shared_cell_bodies_keep_values_gradients_and_statistics(cells_, runs):
  """``share_cell_bodies`` (the default) runs consecutive normal cells as one ``lax.scan``:
  the same logits, statistics, gradients w.r.t. weights and alphas and eval logits as
  calling the cells one by one, on the same parameter tree. The first layout has a run of
  three cells whose first reads the stems' outputs and whose second takes the FL Stem output
  as ``s0``, and a run of two after a reduction cell; in the second (reduction first, as in
  DLS-DARTS) the run starts at cell 1, whose ``s0`` is the FL Stem output. Each run traces
  its DAG once."""
  ops3 = ("none", "skip_connect", "sep_conv_3x3", "max_pool_3x3")
  base = tiny_spec(op_set=ops3, cells=cells_, cell_channels=2)
  assert base.share_cell_bodies
  v = supernet.init(base, jax.random.PRNGKey(0))
  alphas = supernet.init_alphas(base, jax.random.PRNGKey(1), scale=0.5)
  masks = supernet.init_masks(base)
  images = random_images(base, batch=3, seed=5)
  specs = {s: dataclasses.replace(base, share_cell_bodies=s) for s in (False, True)}
  assert jax.tree.structure(supernet.init(specs[False], jax.random.PRNGKey(0))) == (
    jax.tree.structure(v)
  )

  def loss(params, a, spec):
    vv = {"params": params, "batch_stats": v["batch_stats"]}
    logits, stats = supernet.apply(vv, images, a, masks, spec=spec, train=True)
    return jnp.sum(jnp.sin(logits)), (logits, stats)

  def run(spec):
    grad = jax.grad(functools.partial(loss, spec=spec), argnums=(0, 1), has_aux=True)
    (g, (logits, stats)) = jax.jit(grad)(v["params"], alphas)
    evaluate = functools.partial(supernet.apply, spec=spec, train=False)
    ev, _ = jax.jit(evaluate)({"params": v["params"], "batch_stats": stats}, images, alphas, masks)
    # DropPath's keys reach the shared cells (at drop probability 0 nothing is dropped).
    rngs = {"dropout": jax.random.PRNGKey(3)}
    drop = functools.partial(supernet.apply, spec=spec, train=True, rngs=rngs, drop_prob=0.0)
    dropped, _ = jax.jit(drop)(v, images, alphas, masks)
    return g, logits, stats, ev, dropped

  want, got = run(specs[False]), run(specs[True])
  chex.assert_trees_all_close(got, want, atol=1e-5, rtol=1e-4)
  # The statistics compared above moved away from their initial values in every part of
  # every cell: also those updated inside the scan body (a later cell's pre0 and pre1).
  for i in range(len(cells_)):
    for key in ("pre0", "pre1", "dag"):
      moved = jax.tree.map(
        lambda a, b: bool(jnp.any(a != b)),
        want[2][f"cell{i}"][key],
        v["batch_stats"][f"cell{i}"][key],
      )
      assert any(jax.tree.leaves(moved)), (i, key)

  def traced(spec):
    fwd = functools.partial(supernet.apply, spec=spec, train=True)
    f = lambda a: fwd(v, images, a, masks)[0]
    return len(_equations(f, alphas)), _scan_lengths(f, alphas)

  (n_shared, scans_shared), (n_cells, scans_cells) = traced(specs[True]), traced(specs[False])
  assert Network(base)._shared_runs(fl=True) == runs
  # Unshared: each normal cell traces its DAG (two scans: input sources, inner edges).
  # Shared: one scan over the cells per run, tracing one DAG.
  assert len(scans_shared) == len(scans_cells) - 2 * sum(runs.values()) + (1 + 2) * len(runs)
  assert n_shared < 0.8 * n_cells


def test_share_cell_bodies_option():
  cfg = get_config("darts_cifar")
  assert netspec.spec_from_config(cfg.model).share_cell_bodies
  cfg.model.share_cell_bodies = False
  assert not netspec.spec_from_config(cfg.model).share_cell_bodies
