"""Parts and methods as data: a stem, a cell kind and a derivation method registered here, in
the test file only, go through search, derivation and training as the paper's own do."""

import json

import jax
import numpy as np
import pytest
from conftest import TINY_PIPELINE, built_breast_subset, tiny_spec
from genotype_test import random_choice
from supernet_test import random_images

from dlsjax import derivation, derive, derived_net, genotype, parts, search, supernet, train
from dlsjax.configs import load as load_config
from dlsjax.derivation import masks, scoring
from dlsjax.netspec import Modality


@pytest.fixture
def echo_stem():
  """A stem over the non-fluorescence modalities that feeds ``s0`` of the first cells."""
  stem = parts.register_stem("echo", inputs=lambda m: not m.fluorescence, feeds="s0")
  yield stem
  parts.unregister("echo")


@pytest.fixture
def reverse_mpds():
  """MPDS's decisions in reverse order: a derivation method in one function."""

  @derivation.register_method("reverse_mpds")
  def run(ctx):
    order = list(reversed(scoring.decisions(ctx.spec)))
    m, log = scoring.run_decisions(ctx.evaluator, order, progress=ctx.progress)
    return derivation.Result(masks.choice_from_masks(m, ctx.spec.topologies()), log)

  yield run
  derivation.unregister_method("reverse_mpds")


@pytest.fixture
def wide_cell():
  kind = parts.register_cell_kind("wide", reduction=False, inner_nodes=2)
  yield kind
  parts.unregister("wide")


def test_registry_errors_name_the_problem(echo_stem):
  with pytest.raises(ValueError, match="already registered"):
    parts.register_stem("echo", inputs=lambda m: True, feeds="s0")
  with pytest.raises(ValueError, match="feeds must be one of"):
    parts.register_stem("other", inputs=lambda m: True, feeds="s2")
  with pytest.raises(ValueError, match="already a stem"):
    parts.register_cell_kind("echo", reduction=False)
  with pytest.raises(ValueError, match=r"model.echo_stem must be one of"):
    tiny_spec(stems={"echo": "big"})
  with pytest.raises(ValueError, match="unregistered stems"):
    tiny_spec(stems={"nope": "learnable"})
  with pytest.raises(ValueError, match="no stem feeds the cells"):
    tiny_spec(stems={"fusing": "off"})
  # Off by default: the paper's network is unchanged by the registration.
  assert list(tiny_spec().topologies()) == ["fusing", "fl", "normal", "reduce"]
  spec = tiny_spec(stems={"echo": "learnable"})
  assert list(spec.topologies()) == ["fusing", "fl", "echo", "normal", "reduce"]
  assert [m.name for m in spec.stem_inputs("echo")] == ["WL"]


@pytest.mark.heavy
def test_a_stem_registered_in_a_test_is_searched_derived_and_trained(
  echo_stem, reverse_mpds, tmp_path
):
  data = built_breast_subset(tmp_path / "data")
  config = load_config("demo", TINY_PIPELINE)
  config.model.echo_stem = "learnable"  # the one config line
  w = tmp_path / "search"
  search.search(config, data, w, progress=False)
  alphas = np.load(w / "alphas.npz")
  assert set(alphas.files) == {"echo", "normal", "reduce"}
  assert alphas["echo"].shape == (3, 3)  # 1 input, 2 inner nodes: 1 + 2 edges, 3 ops

  geno = derive.derive(w, method="mpds", progress=False)
  assert set(geno.parts) == {"echo", "normal", "reduce"}
  assert (geno.parts["echo"].n_inputs, geno.parts["echo"].concat_last) == (1, True)
  log = json.loads((w / "derivation_log.json").read_text())
  edge_parts = [d["part"] for d in log["decisions"] if d["kind"] == "edge"]
  assert edge_parts == ["echo"] * 3 + ["normal"] * 9 + ["reduce"] * 9  # stems first

  # A method registered in this file runs through the same job (the CLI's --method).
  derive.derive(w, method="reverse_mpds", progress=False)
  log2 = json.loads((w / "derivation_log.json").read_text())
  assert log2["method"] == "reverse_mpds"
  order = [(d["part"], d["kind"]) for d in log2["decisions"]]
  assert order == [(d["part"], d["kind"]) for d in log["decisions"]][::-1]
  geno.save(w / "genotype.json")  # train the MPDS genotype
  with pytest.raises(ValueError, match="derive.method must be one of"):
    derive.derive(w, method="nope", progress=False)

  runs = train.train(config, w / "genotype.json", data, tmp_path / "train", progress=False)
  trained = train.load(tmp_path / "train")
  params = trained.variables[0]["params"]
  assert "dag" in params["echo_stem"]  # the derived stem's DAG was trained
  record = json.loads((runs[0] / "metrics.jsonl").read_text().splitlines()[-1])
  assert np.isfinite(record["loss"])
  # Wired in as s0 of cell 0: its preprocessing reads the echo stem's 2 C_sin channels, while
  # s1 is the identity Fusing Stem's C_sin.
  spec = trained.spec
  assert spec.stem_channels("echo") == 2 * spec.stem_channels("fusing") == 8
  pre0 = jax.tree.leaves(params["cell0"]["pre0"])
  pre1 = jax.tree.leaves(params["cell0"]["pre1"])
  assert 8 in {x.shape[-2] for x in pre0 if x.ndim >= 2}
  assert {x.shape[-2] for x in pre1 if x.ndim >= 2} == {4}


@pytest.mark.heavy
def test_a_cell_kind_registered_in_a_test_matches_its_derived_network(wide_cell):
  spec = tiny_spec(
    modalities=(Modality("WL", 3, False),),
    stems={"fusing": "identity", "fl": "off"},
    cells=("reduce", "wide"),
    op_set=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3"),
  )
  topos = spec.topologies()
  assert list(topos) == ["reduce", "wide"] and topos["wide"].n_inner == 2
  choice = random_choice(spec, seed=5)
  v = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = supernet.init_alphas(spec, jax.random.PRNGKey(1))
  masks = supernet.masks_from_choice(spec, choice)
  images = random_images(spec, batch=4)
  sup = supernet.apply(v, images, alphas, masks, spec=spec, train=True, update_stats=False)[0]
  model = derived_net.make_derived_net(spec, choice, search_style_bn=True)
  template = derived_net.init(model, jax.random.PRNGKey(7))
  mapped = derived_net.variables_from_search(spec, v, choice, template)
  np.testing.assert_allclose(sup, model.apply(mapped, images, train=True), rtol=1e-4, atol=1e-4)
  # Its cell outputs 2 inner nodes of C channels: the head sees 2 * C.
  assert mapped["params"]["head"]["kernel"].shape[0] == 2 * 2 * spec.cell_channels
  geno = genotype.Genotype.from_choice(choice, topos, spec.op_set)
  assert genotype.Genotype.from_json(geno.to_json()) == geno
