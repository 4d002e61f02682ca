"""The model config fitted to a built dataset (dlsjax/data/fit.py)."""

import csv
import json
import logging

import numpy as np
import pytest
from PIL import Image

from dlsjax import netspec
from dlsjax.configs import get_config
from dlsjax.data import builder, dataset, fit, folder


@pytest.fixture(scope="module")
def rgb_nir(tmp_path_factory):
  """A two-modality folder (RGB + one fluorescence NIR), 9 classes, 12 px, with splits."""
  root = tmp_path_factory.mktemp("rgbnir") / "folder"
  root.mkdir()
  classes = [f"c{i}" for i in range(9)]
  desc = {
    "name": "rgbnir",
    "classes": classes,
    "modalities": [
      {"name": "RGB", "channels": 3, "fluorescence": False},
      {"name": "NIR", "channels": 1, "fluorescence": True},
    ],
  }
  (root / "dataset.json").write_text(json.dumps(desc))
  rng = np.random.default_rng(0)
  with (root / "manifest.csv").open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["specimen_id", "patient_id", "label", "split"])
    for i in range(27):
      sid = f"S{i:03d}"
      (root / sid).mkdir()
      Image.fromarray(rng.integers(0, 255, (12, 12, 3), np.uint8)).save(root / sid / "RGB.png")
      Image.fromarray(rng.integers(0, 255, (12, 12), np.uint8)).save(root / sid / "NIR.png")
      w.writerow([sid, sid, classes[i % 9], ("train", "val", "test")[i // 9]])
  built = root.parent / "built"
  builder.build(root, built, builder.BuildOptions(resolution=None))  # the images' own size
  return dataset.load(built)


def test_demo_config_takes_modalities_classes_and_resolution_from_the_data(rgb_nir, caplog):
  cfg = get_config("demo")
  cfg.model.resolution = None
  with caplog.at_level(logging.INFO, logger="dlsjax.data.fit"):
    fitted = fit.fit_config(cfg, rgb_nir)
  assert fitted.model.modalities == [
    {"name": "RGB", "channels": 3, "fluorescence": False},
    {"name": "NIR", "channels": 3, "fluorescence": True},  # grey -> data.gray_channels
  ]
  assert fitted.model.num_classes == 9 and list(fitted.classes) == [f"c{i}" for i in range(9)]
  assert fitted.model.resolution == 12
  assert cfg.model.modalities is None  # the caller's config is not changed
  spec = netspec.spec_from_config(fitted.model, phase="search")
  assert spec.stem_kind("fl") == "learnable"  # NIR is fluorescence: the FL Stem is kept
  assert "model fitted to" in caplog.text


def test_fl_stem_follows_the_fluorescence_flags(tmp_path):
  bm = tmp_path / "bm"
  from dlsjax.data import npz

  npz.from_npz("tests/data/breastmnist_subset.npz", bm, modality="US")
  builder.build(bm, tmp_path / "b", builder.BuildOptions(resolution=None))
  fitted = fit.fit_config(get_config("medmnist"), dataset.load(tmp_path / "b"))
  spec = netspec.spec_from_config(fitted.model, phase="search")
  assert spec.stem_kind("fl") == "off" and spec.resolution == 28 and spec.num_classes == 2


def test_a_pinned_value_the_data_contradicts_is_an_error(rgb_nir):
  paper = get_config("paper")  # pins the paper's WL / NIR1 / NIR2 and 4 grades
  with pytest.raises(folder.DataError, match=r"model.modalities needs \['WL', 'NIR1', 'NIR2'\]"):
    fit.fit_config(paper, rgb_nir)
  cfg = get_config("demo")
  cfg.model.resolution = 16  # pinned, the data is 12 px
  with pytest.raises(folder.DataError, match="built at 12x12 but the model expects 16x16"):
    fit.fit_config(cfg, rgb_nir)
  cfg = get_config("demo")
  cfg.model.resolution = None
  cfg.model.num_classes = 4
  with pytest.raises(folder.DataError, match="9 classes .* model.num_classes is 4"):
    fit.fit_config(cfg, rgb_nir)
  cfg = get_config("demo")
  cfg.model.resolution = None
  cfg.classes = [f"x{i}" for i in range(9)]  # names only label the outputs: the data's win
  assert list(fit.fit_config(cfg, rgb_nir).classes) == [f"c{i}" for i in range(9)]


def test_an_unfitted_config_names_the_missing_field():
  with pytest.raises(ValueError, match="model.modalities is None"):
    netspec.spec_from_config(get_config("demo").model)


def test_medmnist_config_structure():
  c = get_config("medmnist")
  m, s, t = c.model, c.search, c.train
  # From the data, not pinned:
  assert (m.modalities, m.num_classes, c.classes, m.resolution) == (None, None, None, None)
  # The paper's search space and method:
  paper = get_config("paper")
  for key in ("op_set", "fusing_stem", "fl_stem", "stem_inner_nodes", "cell_inner_nodes",
              "k_search", "k_train", "layout"):  # fmt: skip
    assert m[key] == paper.model[key], key
  assert (c.derive.method, s.order) == ("mpds", "first")
  assert (m.k_r, c.runs, t.select) == (2, 3, "val_auc")
  assert s.alpha_warmup_epochs > 0 and s.alpha_warmup_epochs < s.epochs
  # The paper presets keep the paper's values:
  assert get_config("paper").search.alpha_warmup_epochs == 0
  assert get_config("paper_train").train.select == "last"
  full = get_config("medmnist", "full")
  assert full.model.c_sin_train > m.c_sin_train and full.train.epochs >= t.epochs
  with pytest.raises(ValueError, match="unknown variant"):
    get_config("medmnist", "huge")
