import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from conftest import tiny_spec
from genotype_test import random_choice
from supernet_test import random_images

from dlsjax import derived_net, genotype, ops, supernet
from dlsjax.genotype import Genotype
from dlsjax.netspec import Modality


@pytest.mark.heavy
def test_decided_supernet_equals_derived_network():
  # Every op module kind but the second pooling and the plain conv (same modules as max_pool /
  # the convs of sep/dil_conv): the parameter mapping is what is tested; ops have their own tests.
  spec = tiny_spec(op_set=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "dil_conv_3x3"))
  choice = random_choice(spec, seed=3)
  used = {spec.op_set[k] for c in choice.values() for k in c if k >= 0}
  assert len(used) >= 3, used  # the test exercises several op types
  v = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(1))
  masks = supernet.masks_from_choice(spec, choice)
  images = random_images(spec, batch=4)
  sup = jax.jit(
    lambda v, a, m: supernet.apply(v, images, a, m, spec=spec, train=True, update_stats=False)[0]
  )(v, alphas, masks)
  model = derived_net.make_derived_net(spec, choice, search_style_bn=True)
  template = derived_net.init(model, jax.random.PRNGKey(7))
  mapped = derived_net.variables_from_search(spec, v, choice, template)
  der = jax.jit(lambda w: model.apply(w, images, train=True))(mapped)
  np.testing.assert_allclose(sup, der, rtol=1e-4, atol=1e-4)
  # Different weights give a different function: the test can fail.
  other = jax.jit(lambda w: model.apply(w, images, train=True))(template)
  assert not np.allclose(other, der, atol=1e-3)


def test_derived_network_structure_and_droppath():
  # Cells only (the stems' structure has its own tests): half the compile time.
  wl = (Modality("WL", 3, False),)
  spec = tiny_spec(modalities=wl, stems={"fusing": "identity", "fl": "off"})
  choice = random_choice(spec, seed=4)
  model = derived_net.make_derived_net(spec, choice)
  v = jax.eval_shape(lambda: derived_net.init(model, jax.random.PRNGKey(0)))
  for i in range(len(spec.cells)):
    kept = (choice[spec.cells[i]] >= 0).sum()
    assert len(v["params"][f"cell{i}"]["dag"]) <= kept
  # Derived BN is affine.
  assert "scale" in v["params"]["cell0"]["pre1"]["BatchNorm_0"]
  images = random_images(spec)
  f = jax.jit(
    lambda w, p, k: model.apply(
      w, images, train=True, drop_prob=p, rngs={"dropout": k}, mutable=["batch_stats"]
    )[0]
  )
  w = derived_net.init(model, jax.random.PRNGKey(0))
  a = f(w, 0.5, jax.random.PRNGKey(0))
  b = f(w, 0.5, jax.random.PRNGKey(1))
  c = f(w, 0.0, jax.random.PRNGKey(1))
  d = jax.jit(lambda w: model.apply(w, images, train=True, mutable=["batch_stats"])[0])(w)
  assert not np.allclose(a, b)
  np.testing.assert_allclose(c, d, atol=1e-5)
  # Per sample: four copies of one image come out different.
  same = {k: jnp.broadcast_to(x[:1], (4, *x.shape[1:])) for k, x in images.items()}
  g = jax.jit(
    lambda w, i, k: model.apply(
      w, i, train=True, drop_prob=0.5, rngs={"dropout": k}, mutable=["batch_stats"]
    )[0]
  )
  out = np.asarray(g(w, same, jax.random.PRNGKey(2)))
  assert len({out[i].tobytes() for i in range(4)}) > 1
  # Off outside training, whatever the rate and key.
  ev = jax.jit(lambda w, p, k: model.apply(w, images, train=False, drop_prob=p, rngs=k))
  np.testing.assert_array_equal(ev(w, 0.5, {"dropout": jax.random.PRNGKey(3)}), ev(w, 0.0, None))


@ops.register_op("test_nor_conv_7x7")
def _test_nor_conv_7x7(C, stride, ctx):
  """A researcher's op, registered from outside dlsjax: a plain constructor."""
  return ops.ReLUConvBN(C, 7, stride, ctx)


@pytest.mark.heavy
def test_registered_op_can_be_searched_and_derived():
  op_set = ("none", "skip_connect", "test_nor_conv_7x7", "max_pool_3x3")
  # Cells only (one modality, no learnable stems): a third of the step's compile time.
  spec = tiny_spec(
    op_set=op_set, modalities=(Modality("WL", 3, False),), stems={"fusing": "identity", "fl": "off"}
  )
  # Registered without channel_major=True: the supernet keeps its DAGs in NHWC for it.
  assert spec.resolved_dag_layout() == "NHWC"
  with pytest.raises(ValueError, match="test_nor_conv_7x7"):
    dataclasses.replace(spec, dag_layout="CNHW")
  v = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(1))
  masks = supernet.init_masks(spec)
  images = random_images(spec, batch=4)
  labels = jnp.array([0, 1, 2, 3])
  tx_w, tx_a = optax.sgd(0.05, momentum=0.9), optax.adam(0.05)
  opt_w, opt_a = tx_w.init(v["params"]), tx_a.init(alphas)

  def loss(params, a, stats):
    logits, new = supernet.apply(
      {"params": params, "batch_stats": stats}, images, a, masks, spec=spec, train=True
    )
    return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean(), new

  @jax.jit
  def step(params, stats, a, opt_w, opt_a):
    (loss_value, stats), (g_w, g_a) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      params, a, stats
    )
    u, opt_a = tx_a.update(g_a, opt_a)
    a = optax.apply_updates(a, u)
    u, opt_w = tx_w.update(g_w, opt_w)
    return optax.apply_updates(params, u), stats, a, opt_w, opt_a, loss_value

  params, stats = v["params"], v["batch_stats"]
  losses = []
  for _ in range(4):
    params, stats, alphas, opt_w, opt_a, loss_value = step(params, stats, alphas, opt_w, opt_a)
    losses.append(float(loss_value))
  assert losses[-1] < losses[0]
  k_new = op_set.index("test_nor_conv_7x7")
  assert any("test_nor_conv_7x7" in k for k in params["cell0"]["dag"])
  # Favour the new op on every edge, derive: the genotype contains it.
  favoured = {p: a.at[:, k_new].add(5.0) for p, a in alphas.items()}
  choice = genotype.derive_argmax(favoured, spec.topologies(), op_set)
  g = Genotype.from_choice(choice, spec.topologies(), op_set)
  assert "test_nor_conv_7x7" in g.to_json()
  g2 = Genotype.from_json(g.to_json())
  model = derived_net.make_derived_net(spec, g2.to_choice(spec.topologies(), op_set))
  w = jax.eval_shape(lambda: derived_net.init(model, jax.random.PRNGKey(0)))
  assert w["params"]["cell0"]["dag"]["edge0"]["ReLUConvBN_0"]["kernel"].shape[:2] == (7, 7)
