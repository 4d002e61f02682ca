import json

import numpy as np
import pytest
from conftest import tiny_spec

from dlsjax import genotype, ops
from dlsjax.genotype import DARTS_V2, Genotype, GenotypeError
from dlsjax.topology import Topology


def random_choice(spec, seed=0):
  rng = np.random.default_rng(seed)
  alphas = {
    p: rng.normal(size=(t.num_edges, len(spec.op_set))) for p, t in spec.topologies().items()
  }
  return genotype.derive_argmax(alphas, spec.topologies(), spec.op_set)


def test_json_round_trip(tmp_path):
  spec = tiny_spec()
  choice = random_choice(spec)
  g = Genotype.from_choice(choice, spec.topologies(), spec.op_set)
  path = tmp_path / "genotype.json"
  g.save(path)
  g2 = Genotype.load(path)
  assert g2 == g
  back = g2.to_choice(spec.topologies(), spec.op_set)
  for p in choice:
    np.testing.assert_array_equal(back[p], choice[p])
  assert json.loads(path.read_text())["format"] == genotype.FORMAT


def test_darts_v2_preset_round_trips():
  topo = {"normal": Topology(2, 4), "reduce": Topology(2, 4)}
  c = DARTS_V2.to_choice(topo, ops.DARTS8)
  # Node 4 of the normal cell (edges 5-8): sep_conv_3x3 from 1, skip_connect from 0.
  assert c["normal"][5] == ops.DARTS8.index("skip_connect")  # edge (0, 4)
  assert c["normal"][6] == ops.DARTS8.index("sep_conv_3x3")  # edge (1, 4)
  assert list(c["normal"][7:9]) == [-1, -1]
  # Node 5 of the reduction cell (edges 9-13): skip_connect from 2, max_pool_3x3 from 1.
  assert list(c["reduce"][9:14]) == [-1, 1, 3, -1, -1]
  assert (c["normal"] >= 0).sum() == 8 and (c["reduce"] >= 0).sum() == 8
  # from_choice lists a node's inputs in edge order; the encoding is the same.
  back = Genotype.from_choice(c, topo, ops.DARTS8).to_choice(topo, ops.DARTS8)
  for p in c:
    np.testing.assert_array_equal(back[p], c[p])


def test_argmax_derivation_skips_none_and_keeps_top_k():
  topo = {"normal": Topology(2, 2)}
  op_set = ("none", "skip_connect", "sep_conv_3x3")
  a = np.zeros((5, 3))
  a[:, 0] = 10.0  # 'none' strongest everywhere: never selected
  a[0, 2] = 1.0
  a[2, 1], a[3, 2], a[4, 1] = 0.5, 2.0, 3.0  # node 1: edges 2, 3, 4 -> keep 4 and 3
  c = genotype.derive_argmax({"normal": a}, topo, op_set)["normal"]
  assert list(c) == [2, 1, -1, 2, 1]
  # Learnable stems: the concatenating last node keeps every precedent.
  stem = {"fusing": Topology(3, 2, concat_last=True)}
  cs = genotype.derive_argmax({"fusing": np.zeros((7, 3))}, stem, op_set)["fusing"]
  assert (cs >= 0).all()


def bad(d, **changes):
  d = json.loads(json.dumps(d))
  for path, value in changes.items():
    node = d
    keys = path.split("/")
    for k in keys[:-1]:
      node = node[int(k)] if isinstance(node, list) else node[k]
    last = keys[-1]
    if isinstance(node, list):
      node[int(last)] = value
    else:
      node[last] = value
  return d


@pytest.mark.parametrize(
  "change,message",
  [
    (
      {"parts/normal/nodes/0/0/op": "conv_9x9"},
      r"parts.normal.nodes\[0\]\[0\].op: unknown operation",
    ),
    (
      {"parts/normal/nodes/1/0/input": 7},
      r"parts.normal.nodes\[1\]\[0\].input: 7 out of range",
    ),
    (
      {"parts/normal/nodes/0": [{"op": "sep_conv_3x3", "input": 0}]},
      r"parts.normal.nodes\[0\]: has 1 inputs, expected 2",
    ),
    ({"parts/normal/nodes/0/0/op": "none"}, r"'none' cannot be selected"),
    ({"parts/normal/nodes/0/1/input": 0}, r"repeats an input node"),
    ({"parts/normal/n_inputs": "two"}, r"parts.normal.n_inputs: expected int"),
    ({"op_set": "darts8"}, r"genotype.op_set: expected list"),
  ],
)
def test_bad_genotypes_are_rejected_naming_the_field(change, message):
  d = bad(DARTS_V2.to_dict(), **change)
  with pytest.raises(GenotypeError, match=message):
    Genotype.from_dict(d)


def test_bad_json_files(tmp_path):
  p = tmp_path / "g.json"
  p.write_text("{not json")
  with pytest.raises(GenotypeError, match=r"g.json: genotype: invalid JSON"):
    Genotype.load(p)
  d = DARTS_V2.to_dict()
  del d["parts"]["reduce"]["nodes"][0][0]["input"]
  p.write_text(json.dumps(d))
  with pytest.raises(GenotypeError, match=r"parts.reduce.nodes\[0\]\[0\]: missing field 'input'"):
    Genotype.load(p)


def test_genotype_inconsistent_with_network():
  spec = tiny_spec()
  with pytest.raises(GenotypeError, match="parts.normal: has 2 inputs / 4 inner nodes"):
    DARTS_V2.to_choice({"normal": Topology(2, 3), "reduce": Topology(2, 3)})
  with pytest.raises(GenotypeError, match=r"parts: missing \['fl', 'fusing'\]"):
    g = Genotype.from_choice(
      random_choice(spec),
      {k: v for k, v in spec.topologies().items() if k in ("normal", "reduce")},
      spec.op_set,
    )
    g.to_choice(spec.topologies(), spec.op_set)
