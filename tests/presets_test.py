"""The canonical DARTS presets, matched against facts of the original DARTS code."""

import jax
import numpy as np

from dlsjax import derived_net, describe, genotype, netspec, supernet
from dlsjax.configs import get_config


def test_darts_cifar_search_space():
  spec = netspec.spec_from_config(get_config("darts_cifar").model, phase="search")
  assert spec.cells == (
    "normal",
    "normal",
    "reduce",
    "normal",
    "normal",
    "reduce",
    "normal",
    "normal",
  )
  assert spec.c_sin == 48 and spec.cell_channels == 16 and spec.resolution == 32
  assert list(spec.topologies()) == ["normal", "reduce"]
  assert spec.topologies()["normal"].num_edges == 14
  shapes = jax.eval_shape(lambda: supernet.init(spec, jax.random.PRNGKey(0)))
  p = shapes["params"]
  assert p["stem_image"]["kernel"].shape == (3, 3, 3, 48)  # 3x3 stem to 3C
  assert set(p["stem_image"]["BatchNorm_0"]) == {"scale", "bias"}  # only the stem BN is affine
  assert set(p["cell0"]["pre0"]) == {"kernel"}  # search BN elsewhere is non-affine
  # Cell 3 follows a reduction: its s0 is factorized-reduced.
  assert set(p["cell3"]["pre0"]) == {"kernel1", "kernel2"}
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(0))
  assert {k: a.shape for k, a in alphas.items()} == {"normal": (14, 8), "reduce": (14, 8)}


def test_network_cifar_darts_v2_parameter_count():
  spec = netspec.spec_from_config(get_config("darts_cifar_train").model, phase="train")
  assert len(spec.cells) == 20 and spec.cells[6] == spec.cells[13] == "reduce"
  choice = genotype.DARTS_V2.to_choice(spec.topologies(), spec.op_set)
  model = derived_net.make_derived_net(spec, choice, aux_head=True)
  v = jax.eval_shape(lambda: derived_net.init(model, jax.random.PRNGKey(0)))
  # The DARTS code reports 3.349342 M parameters for DARTS_V2 on CIFAR-10
  # (auxiliary head excluded); the auxiliary head itself has 476,426.
  assert describe.count_params(v["params"], exclude=("aux_head",)) == 3_349_342
  assert describe.count_params({"a": v["params"]["aux_head"]}) == 476_426


def test_network_cifar_aux_head_runs_in_training_only():
  spec = netspec.spec_from_config(get_config("darts_cifar_train").model, phase="train")
  spec = netspec.NetworkSpec(
    **{**spec.__dict__, "cells": netspec.darts_cells(3), "cell_channels": 4, "c_sin": 12}
  )
  choice = genotype.DARTS_V2.to_choice(spec.topologies(), spec.op_set)
  model = derived_net.make_derived_net(spec, choice, aux_head=True)
  images = {"image": np.zeros((2, 32, 32, 3), np.float32)}

  def run(train):
    w = derived_net.init(model, jax.random.PRNGKey(0))
    return derived_net.apply(model, w, images, train=train)

  logits, _, aux = jax.eval_shape(lambda: run(True))
  assert logits.shape == (2, 10) and aux.shape == (2, 10)
  _, _, aux = jax.eval_shape(lambda: run(False))
  assert aux is None
