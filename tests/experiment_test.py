"""The tables as data: rows, applicability, shared searches, budgets (no training here; the
end-to-end run of a table is in tests/demo_test.py, which has the compiled steps it needs)."""

import copy

import pytest

from dlsjax import experiment, netspec
from dlsjax.configs import get_config


def config_for(modalities):
  cfg = get_config("experiment", "paper")
  cfg.model.modalities = modalities
  cfg.model.num_classes = 4
  return cfg


PAPER = [
  {"name": "WL", "channels": 3, "fluorescence": False},
  {"name": "NIR1", "channels": 3, "fluorescence": True},
  {"name": "NIR2", "channels": 3, "fluorescence": True},
]
SINGLE = [{"name": "US", "channels": 3, "fluorescence": False}]


def test_paper_budget_is_the_papers_settings():
  cfg = get_config("experiment", "paper")
  assert cfg.experiment.runs == 5 and cfg.evaluate.bootstrap == 1000
  assert (cfg.evaluate.throughput_batch, cfg.evaluate.throughput_batches) == (128, 50)
  assert cfg.train.epochs == 110 and cfg.search.epochs == 50 and cfg.derive.method == "mpds"
  assert experiment.budget_reductions(cfg) == []
  demo = get_config("experiment", "demo")
  reduced = {k: (a, b) for k, a, b in experiment.budget_reductions(demo)}
  assert reduced["train.epochs"] == ("110", "5") and reduced["experiment.runs"] == ("5", "1")
  assert reduced["model.baselines.pyramidnet_shakedrop.depth"] == ("272", "20")
  with pytest.raises(ValueError, match="budget"):
    get_config("experiment", "huge")


def test_rows_not_applicable_on_a_single_modality_dataset():
  single, paper = config_for(SINGLE), config_for(PAPER)
  why = {r.label: experiment.not_applicable(r, single) for r in experiment.TABLES["table1"].rows}
  assert "fluorescence" in why["MMNAS"] and "--pretrained" in why["EfficientNet-B0 (pretrained)"]
  assert why["DLS-DARTS"] is None and why["ResNet-18"] is None
  why3 = {r.label: experiment.not_applicable(r, single) for r in experiment.TABLES["table3"].rows}
  assert [k for k, v in why3.items() if v] == ["- FL Stem", "- Learnable Stems"]
  assert all(experiment.not_applicable(r, paper) is None for r in experiment.TABLES["table3"].rows)
  paper.model.baselines.efficientnet_b0.pretrained = "/ckpt"
  assert experiment.not_applicable(experiment.TABLES["table1"].rows[3], paper) is None


def test_table2_has_one_searched_row_per_modality():
  rows = experiment.rows_for(experiment.TABLES["table2"], config_for(PAPER))
  assert [r.label for r in rows] == ["Multi-modal", "WL", "NIR-I", "NIR-II"]
  search_cfg, _ = experiment.row_configs(rows[3], config_for(PAPER))
  assert [m["name"] for m in search_cfg.model.modalities] == ["NIR2"]
  keys = {experiment.search_key(experiment.row_configs(r, config_for(PAPER))[0]) for r in rows}
  assert len(keys) == 4  # each image mode is searched on its own
  assert len(experiment.rows_for(experiment.TABLES["table2"], config_for(SINGLE))) == 1


def test_which_rows_share_a_search():
  base = config_for(PAPER)
  key = lambda r: experiment.search_key(experiment.row_configs(r, base)[0])  # noqa: E731
  t3, t4, t5, t6 = (experiment.TABLES[t].rows for t in ("table3", "table4", "table5", "table6"))
  main = key(t3[0])
  # Ablations of derivation and stems, K_train, and the paper's op set reuse the main search.
  assert {key(r) for r in (*t3, *t5)} == {main} and key(t4[2]) == main and key(t6[1]) == main
  # Other op sets and K_r re-search.
  assert len({key(t4[0]), key(t4[1]), key(t6[0]), key(t6[2]), main}) == 5
  # MMNAS searches its own space; baselines search nothing.
  t1 = experiment.TABLES["table1"].rows
  assert key(t1[1]) != main and experiment.row_configs(t1[5], base)[0] is None


def test_stem_ablation_trains_the_same_cells_with_concatenating_stems():
  base = config_for(PAPER)
  row = experiment.TABLES["table3"].rows[4]  # - Learnable Stems
  search_cfg, train_cfg = experiment.row_configs(row, base)
  assert (search_cfg.model.fusing_stem, search_cfg.model.fl_stem) == ("learnable", "learnable")
  assert (train_cfg.model.fusing_stem, train_cfg.model.fl_stem) == ("concat", "concat")
  assert set(row.drop_parts) == {"fusing", "fl"}
  spec = netspec.spec_from_config(train_cfg.model, phase="train")
  assert set(spec.topologies()) == {"normal", "reduce"}
  # K_train rows: L = 3 groups x (1 reduction + K_train normal cells).
  for row, cells in zip(experiment.TABLES["table5"].rows, (6, 9, 12), strict=True):
    _, cfg = experiment.row_configs(row, base)
    assert len(netspec.spec_from_config(cfg.model, phase="train").cells) == cells
  unchanged = copy.deepcopy(base)
  experiment.row_configs(row, base)
  assert base.to_dict() == unchanged.to_dict()  # rows never modify the base config


def test_unknown_table_and_bad_resolution_are_clear(tmp_path):
  with pytest.raises(experiment.ExperimentError, match="unknown table"):
    experiment.run_table("table9", tmp_path, tmp_path)
