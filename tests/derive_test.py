"""Architecture derivation: MPDS decisions, vmapped scoring == per-candidate loop, compile count."""

import dataclasses

import jax
import numpy as np
import pytest
from conftest import cells_only_spec, tiny_spec

from dlsjax import derivation, genotype, supernet
from dlsjax.derivation import masks as mask_ops
from dlsjax.derivation import pt, scoring

SPEC = tiny_spec(op_set=("none", "max_pool_3x3", "skip_connect", "sep_conv_3x3", "nor_conv_3x3"))
# The networks that are run: cells only (2 parts), the fastest to compile.
NET = cells_only_spec()


class ScriptedEvaluator:
  """Scores a candidate by a fixed random linear function of its masks (no network)."""

  def __init__(self, spec, metric="accuracy", seed=0):
    self.spec = spec
    self.opts = derivation.DeriveOptions(metric=metric)
    rng = np.random.default_rng(seed)
    self.w = jax.tree.map(lambda m: rng.normal(size=m.shape), mask_ops.host_masks(spec))
    self.calls = []

  def scores(self, part, candidates):
    self.calls.append((part, len(candidates)))
    vals = [
      sum(float(np.sum(self.w[p][k] * c[p][k])) for p in c for k in ("op", "edge"))
      for c in candidates
    ]
    return np.round(np.array(vals), 1)  # coarse: ties happen and must go to the first


@pytest.mark.parametrize("metric", ["accuracy", "loss"])
def test_mpds_decisions_follow_algorithm_1(metric):
  ev = ScriptedEvaluator(SPEC, metric)
  order = scoring.decisions(SPEC)
  topos = SPEC.topologies()
  assert list(topos) == ["fusing", "fl", "normal", "reduce"]
  # Per part: every edge in edge order, then every inner node in order.
  expect = []
  for p, t in topos.items():
    expect += [(p, "edge", e) for e in range(t.num_edges)] + [
      (p, "node", j) for j in range(t.n_inner)
    ]
  assert order == expect
  masks, entries = scoring.run_decisions(ev, order)
  sign = 1 if metric == "loss" else -1
  for entry in entries:
    c = entry["candidates"]
    if entry["kind"] == "edge":
      assert "none" not in [x["op"] for x in c] and len(c) == len(SPEC.op_set) - 1
      bad = [sign * x["metric"] for x in c]
      assert entry["choice"] == c[bad.index(max(bad))]["op"]  # worst removal, first on ties
    elif c:
      bad = np.array([sign * x["metric"] for x in c])
      want = sorted(np.argsort(-bad, kind="stable")[: topos[entry["part"]].k])
      assert entry["kept"] == [c[i]["source"] for i in want]
  geno = genotype.Genotype.from_choice(mask_ops.choice_from_masks(masks, topos), topos, SPEC.op_set)
  for p, t in topos.items():
    for j, node in enumerate(geno.parts[p].nodes):
      assert len(node) == t.keeps(j)  # k precedents; a stem's last node keeps all
      assert all(op != "none" for op, _ in node)
  # The concatenating last node of a learnable stem is never scored.
  stem_last = [e for e in entries if e["part"] == "fusing" and e["kind"] == "node"][-1]
  assert stem_last["candidates"] == [] and len(stem_last["kept"]) == topos["fusing"].keeps(
    topos["fusing"].n_inner - 1
  )


def test_pt_order_is_seeded_random_edges_then_nodes():
  a, b = pt.pt_decisions(SPEC, 0), pt.pt_decisions(SPEC, 1)
  assert sorted(a) == sorted(scoring.decisions(SPEC)) and a != scoring.decisions(SPEC)
  assert a == pt.pt_decisions(SPEC, 0) and a != b
  kinds = [k for _, k, _ in a]
  assert kinds == sorted(kinds)  # "edge" < "node": all edges first


def random_setup(spec, seed=0):
  """Random weights and strongly non-uniform alphas, and 2 validation batches of 8."""
  variables = supernet.init(spec, jax.random.PRNGKey(0))
  alphas = jax.tree.map(lambda a: a * 1500.0, supernet.init_alphas(spec, jax.random.PRNGKey(1)))
  rng = np.random.default_rng(seed)
  r = spec.resolution
  batches = [
    {
      "images": {m.name: rng.random((8, r, r, m.channels), np.float32) for m in spec.modalities},
      "label": rng.integers(0, spec.num_classes, 8).astype(np.int32),
    }
    for _ in range(2)
  ]
  return variables, alphas, batches


@pytest.fixture(scope="module")
def trained_like():
  return random_setup(NET)


def test_vmapped_derivation_equals_per_candidate_loop(trained_like):
  """Same genotype, same per-candidate metrics; a fixed number of compilations, 4 devices."""
  variables, alphas, batches = trained_like
  runs = {}
  for name, opts, devices in [
    ("loop", derivation.DeriveOptions(metric="loss", vmap=False), jax.devices()[:1]),
    ("vmap", derivation.DeriveOptions(metric="loss", chunk=4), jax.devices()),
  ]:
    ev = scoring.Evaluator(NET, variables, alphas, batches, opts=opts, devices=devices)
    masks, entries = scoring.run_decisions(ev, scoring.decisions(NET))
    runs[name] = (mask_ops.choice_from_masks(masks, NET.topologies()), entries, ev)
  (c_loop, e_loop, ev_loop), (c_vmap, e_vmap, ev_vmap) = runs["loop"], runs["vmap"]
  for p in c_loop:
    np.testing.assert_array_equal(c_loop[p], c_vmap[p])
  for a, b in zip(e_loop, e_vmap, strict=True):
    assert (a.get("choice"), a.get("kept")) == (b.get("choice"), b.get("kept"))
    np.testing.assert_allclose(
      [x["metric"] for x in a["candidates"]], [x["metric"] for x in b["candidates"]], rtol=2e-5
    )
  # The metric separates the candidates (the comparison is not between constant scores).
  assert len({round(x["metric"], 4) for x in e_vmap[0]["candidates"]}) > 1
  # Compilations: one for the loop; for the vmapped scoring the stems (no learnable one
  # here), the broadcast of their output to the candidates and the cells, whatever the
  # number of decisions. The stem output is computed once for the whole derivation.
  assert ev_loop.compilations == 1
  assert ev_vmap.compilations == 3
  assert ev_vmap.stem_passes == 1
  want = 0
  for t in NET.topologies().values():
    want += t.num_edges * (len(NET.op_set) - 1)  # every non-zero op of every edge
    want += sum(len(t.node_edges(j)) for j in range(t.n_inner) if t.keeps(j) < j + t.n_inputs)
  assert ev_vmap.evaluations == ev_loop.evaluations == want  # 50 candidates, 2 compilations


def test_accuracy_metric_is_identical_and_compiles_once_per_stage(trained_like):
  """Accuracy counts are exact; more decisions (and chunk sizes) add no compilation, under
  pmap and shard_map."""
  variables, alphas, batches = trained_like
  candidates = [mask_ops.without_op(mask_ops.host_masks(NET), "normal", 0, k) for k in (1, 2)]
  got = {}
  for name, opts, n_compiled, mode in [
    ("loop", derivation.DeriveOptions(vmap=False), 1, "pmap"),
    ("chunk3", derivation.DeriveOptions(chunk=3), 3, "pmap"),
    ("chunk2", derivation.DeriveOptions(chunk=2), 3, "shard_map"),
  ]:
    ev = scoring.Evaluator(NET, variables, alphas, batches, opts=opts, mode=mode)
    got[name] = ev.scores("normal", candidates)
    ev.scores("reduce", candidates[:2])
    ev.scores("normal", candidates[::-1])
    assert ev.compilations == n_compiled, name
  np.testing.assert_array_equal(got["loop"], got["chunk3"])
  np.testing.assert_array_equal(got["loop"], got["chunk2"])
  assert np.all((got["chunk3"] * 16) == np.round(got["chunk3"] * 16))  # counts of 16 examples


def staged_equals_loop(spec, plan, *, chunk, seed):
  """Scores ``plan`` (``[(part, candidates)]``) with the loop and the staged evaluator, checks
  they agree and returns ``(staged scores, staged evaluator)``."""
  variables, alphas, batches = random_setup(spec, seed=seed)
  got = {}
  for name, opts in [
    ("loop", derivation.DeriveOptions(metric="loss", vmap=False)),
    ("staged", derivation.DeriveOptions(metric="loss", chunk=chunk)),
  ]:
    ev = scoring.Evaluator(spec, variables, alphas, batches, opts=opts)
    got[name] = [ev.scores(part, cands) for part, cands in plan]
  for a, b in zip(got["loop"], got["staged"], strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5)
  return got["staged"], ev


def test_vmapped_scoring_through_shared_normal_cells_equals_the_unshared_loop():
  """MPDS scores candidates through the scan over a run of normal cells (``share_cell_bodies``,
  the default), vmapped over the candidates' masks, as the unshared network does one by one."""
  shared = dataclasses.replace(NET, cells=("normal", "normal", "reduce"))
  assert shared.share_cell_bodies
  unshared = dataclasses.replace(shared, share_cell_bodies=False)
  variables, alphas, batches = random_setup(shared, seed=2)
  base = mask_ops.host_masks(shared)
  plan = [
    ("normal", [mask_ops.without_op(base, "normal", e, k) for e, k in ((0, 1), (1, 2), (2, 1))]),
    ("normal", [mask_ops.without_edge(base, "normal", e) for e in (0, 1, 2)]),
    ("reduce", [mask_ops.without_op(base, "reduce", 1, k) for k in (1, 2)]),
  ]
  got = {}
  for name, spec, opts in [
    ("loop", unshared, derivation.DeriveOptions(metric="loss", vmap=False)),
    ("vmap", shared, derivation.DeriveOptions(metric="loss", chunk=3)),
  ]:
    ev = scoring.Evaluator(spec, variables, alphas, batches, opts=opts)
    got[name] = [ev.scores(part, cands) for part, cands in plan]
  for a, b in zip(got["vmap"], got["loop"], strict=True):
    np.testing.assert_allclose(a, b, rtol=2e-5)
  assert len({round(float(x), 5) for x in got["vmap"][0]}) > 1  # the masks change the score


def test_staged_scoring_with_learnable_stems_equals_the_whole_network():
  """Fusing and FL Stem candidates: the stem stages, the cached other stem and the cells
  give the loop's metrics; the cache is recomputed only when a stem's masks change."""
  spec = dataclasses.replace(SPEC, op_set=("none", "skip_connect", "sep_conv_3x3"))
  base = mask_ops.host_masks(spec)
  fused_edge = mask_ops.without_edge(base, "fusing", 0)  # a stem decision already taken
  plan = [
    ("fusing", [mask_ops.without_op(base, "fusing", 3, k) for k in (1, 2)]),
    ("fusing", [mask_ops.without_edge(base, "fusing", e) for e in (0, 1, 2)]),
    ("fl", [mask_ops.without_op(fused_edge, "fl", 1, k) for k in (1, 2)]),
    ("normal", [mask_ops.without_op(fused_edge, "normal", 0, k) for k in (1, 2)]),
    ("reduce", [mask_ops.without_edge(fused_edge, "reduce", e) for e in (2, 3, 4)]),
  ]
  staged, ev = staged_equals_loop(spec, plan, chunk=3, seed=1)
  # fusing, fl, cells and the two reshapes of cached stem outputs (first, broadcast); no
  # separate stems graph. The cached stem outputs were computed for the fusing decisions
  # (FL under the base masks) and the fl decision (Fusing after its edge 0 was decided);
  # the cells reuse both (only the stem being decided is recomputed, so a candidate's FL
  # masks never enter the cache).
  assert ev.compilations == 5 and ev.stem_passes == 2
  assert set(ev._runners) == {"fusing", "fl", "cells", "first", "broadcast"}
  assert len({round(float(x), 5) for x in staged[0]}) > 1  # the stem's ops matter


def test_staged_scoring_with_one_learnable_stem_equals_the_whole_network():
  """A learnable Fusing Stem beside a concatenating FL Stem (the "- FL Stem" ablation): the
  manual stem's output comes from the stems stage, the learnable one's from its own."""
  spec = dataclasses.replace(
    SPEC, op_set=("none", "skip_connect", "avg_pool_3x3"), stems={"fl": "concat"}
  )
  base = mask_ops.host_masks(spec)
  assert set(base) == {"fusing", "normal", "reduce"}
  plan = [
    ("fusing", [mask_ops.without_op(base, "fusing", 2, k) for k in (1, 2)]),
    ("normal", [mask_ops.without_op(base, "normal", 1, k) for k in (1, 2)]),
  ]
  _, ev = staged_equals_loop(spec, plan, chunk=2, seed=2)
  assert set(ev._runners) == {"fusing", "stems", "first", "broadcast", "cells"}


def test_masks_change_the_score_only_where_applied(trained_like):
  variables, alphas, batches = trained_like
  ev = scoring.Evaluator(
    NET, variables, alphas, batches, opts=derivation.DeriveOptions(metric="loss")
  )
  base = mask_ops.host_masks(NET)
  # Removing an op whose mixing weight is already masked to 0 changes nothing.
  m0 = mask_ops.without_op(base, "reduce", 1, 1)
  same = mask_ops.without_op(m0, "reduce", 1, 1)
  s = ev.scores("reduce", [m0, same, mask_ops.without_edge(base, "reduce", 1)])
  assert s[0] == s[1] and s[2] != s[0]


def test_options_are_checked():
  with pytest.raises(ValueError, match="derive.method"):
    derivation.DeriveOptions(method="random")
  with pytest.raises(ValueError, match="derive.metric"):
    derivation.DeriveOptions(metric="f1")
  assert dataclasses.asdict(derivation.DeriveOptions())["method"] == "mpds"
