"""Dataset folder format, TFDS build, splits, from-npz and every bad-input case."""

import csv
import json
import logging
import pathlib
import shutil

import numpy as np
import pytest
from conftest import BREAST_SUBSET as BREAST
from PIL import Image

from dlsjax.data import builder, dataset, folder, npz, synth

SMALL = builder.BuildOptions(resolution=16, test_patients=2)


@pytest.fixture(scope="module")
def synth_folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("synth") / "folder"
  synth.synthesize(root, specimens=24, patients=6, seed=1, size=32)
  return root


@pytest.fixture
def folder_copy(synth_folder, tmp_path):
  dst = tmp_path / "folder"
  shutil.copytree(synth_folder, dst)
  return dst


def build_fails(root: pathlib.Path, match: str, opts=SMALL):
  """The build raises DataError matching ``match`` and leaves nothing behind."""
  out = root.parent / "built"
  with pytest.raises(folder.DataError, match=match):
    builder.build(root, out, opts)
  assert not out.exists()
  assert not [p for p in root.parent.iterdir() if ".building-" in p.name]


def rewrite_manifest(root, edit):
  path = root / "manifest.csv"
  rows = list(csv.reader(path.open()))
  rows = edit(rows)
  with path.open("w", newline="") as f:
    csv.writer(f).writerows(rows)


def test_build_load_and_decode(synth_folder, tmp_path):
  meta = builder.build(synth_folder, tmp_path / "built", SMALL)
  ds = dataset.load(tmp_path / "built")
  assert ds.modalities == ("WL", "NIR1", "NIR2") and ds.desc.classes == ("I", "II", "III", "IV")
  assert set(ds.splits) == {"train", "test"}
  total = sum(sum(c.values()) for c in meta["class_counts"].values())
  assert total == 24
  src = ds.source("train")
  assert len(src) == sum(meta["class_counts"]["train"].values())
  ex = ds.decode(src[0])
  for m in ds.modalities:
    x = ex["images"][m]
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
  # Fluorescence is duplicated to 3 channels, WL keeps its colours.
  np.testing.assert_array_equal(ex["images"]["NIR1"][..., 0], ex["images"]["NIR1"][..., 2])
  labels = [int(ds.decode(src[i])["label"]) for i in range(len(src))]
  assert np.bincount(labels, minlength=4).tolist() == list(meta["class_counts"]["train"].values())
  info = ds.info()
  assert "NIR1 (1 ch, fluorescence)" in info and "train" in info and "test" in info


def test_patient_level_split_is_disjoint_and_seeded(synth_folder):
  desc, rows = folder.validate(synth_folder, test_patients=2, seed=0)
  rows0 = folder.read_manifest(synth_folder, desc)
  test_pats = {r.patient_id for r in rows if r.split == "test"}
  train_pats = {r.patient_id for r in rows if r.split == "train"}
  assert len(test_pats) == 2 and not test_pats & train_pats
  assert len(test_pats | train_pats) == 6
  _, again = folder.validate(synth_folder, test_patients=2, seed=0)
  assert [r.split for r in again] == [r.split for r in rows]
  # Class-aware: every grade present in the data is present in train.
  counts = folder.class_counts(rows, desc)
  for c in desc.classes:
    if counts["train"][c] + counts["test"][c]:
      assert counts["train"][c] > 0
  # With one candidate the choice is a plain seeded draw of patients.
  splits_by_seed = {
    tuple(r.split for r in folder.assign_splits(rows0, test_patients=2, seed=s, candidates=1))
    for s in range(8)
  }
  assert len(splits_by_seed) > 1
  with pytest.raises(folder.DataError, match="cannot put 6 of 6 patients"):
    folder.validate(synth_folder, test_patients=6)


def test_manifest_split_column_is_used(folder_copy):
  def add_split(rows):
    pats = sorted({r[1] for r in rows[1:]})
    return [rows[0] + ["split"]] + [r + ["test" if r[1] == pats[0] else "train"] for r in rows[1:]]

  rewrite_manifest(folder_copy, add_split)
  _, rows = folder.validate(folder_copy, test_patients=5)
  pats = sorted({r.patient_id for r in rows})
  assert {r.patient_id for r in rows if r.split == "test"} == {pats[0]}


def test_on_the_fly_preprocessing_matches_build(synth_folder, tmp_path):
  builder.build(synth_folder, tmp_path / "a", SMALL)
  otf = builder.BuildOptions(resolution=16, test_patients=2, preprocess="on_the_fly")
  builder.build(synth_folder, tmp_path / "b", otf)
  a, b = dataset.load(tmp_path / "a"), dataset.load(tmp_path / "b")
  raw = b.source("test")[0]
  assert raw["NIR1"].shape == (32, 32, 1)  # stored raw
  sa, sb = a.source("test"), b.source("test")
  for i in range(len(sa)):
    ea, eb = a.decode(sa[i]), b.decode(sb[i])
    assert ea["specimen_id"] == eb["specimen_id"]
    for m in a.modalities:
      np.testing.assert_array_equal(ea["images"][m], eb["images"][m])
  a.check_resolution(16)
  with pytest.raises(folder.DataError, match="built at 16x16 but the model expects 64x64"):
    a.check_resolution(64)
  b.check_resolution(64)  # raw data can be preprocessed to any resolution
  assert b.decode(sb[0], resolution=24)["images"]["WL"].shape == (24, 24, 3)


def test_read_image_formats(tmp_path):
  rng = np.random.default_rng(0)
  u8 = rng.integers(0, 256, (9, 7), dtype=np.uint8)
  u16 = rng.integers(0, 65536, (9, 7), dtype=np.uint16)
  f32 = rng.random((9, 7), dtype=np.float32) * 1e4
  rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
  Image.fromarray(u8).save(tmp_path / "a.png")
  Image.fromarray(u16).save(tmp_path / "b.png")
  Image.fromarray(u16).save(tmp_path / "c.tif")
  Image.fromarray(f32).save(tmp_path / "d.tiff")
  Image.fromarray(rgb).save(tmp_path / "e.png")
  Image.fromarray(rgb).save(tmp_path / "f.jpg")
  for name, want in (
    ("a.png", u8),
    ("b.png", u16),
    ("c.tif", u16),
    ("d.tiff", f32),
    ("e.png", rgb),
  ):
    got = folder.read_image(tmp_path / name)
    np.testing.assert_array_equal(got, want if want.ndim == 3 else want[..., None], err_msg=name)
    assert got.dtype == want.dtype, name
  assert folder.read_image(tmp_path / "f.jpg").shape == (9, 7, 3)


def test_from_npz_real_breastmnist_subset(tmp_path):
  desc = npz.from_npz(BREAST, tmp_path / "bm", modality="US", classes=["malignant", "benign"])
  assert desc["modalities"] == [{"name": "US", "channels": 1, "fluorescence": False}]
  opts = builder.BuildOptions(resolution=28, test_patients=1)
  meta = builder.build(tmp_path / "bm", tmp_path / "bmb", opts)
  assert meta["class_counts"] == {
    "train": {"malignant": 20, "benign": 20},
    "val": {"malignant": 5, "benign": 5},
    "test": {"malignant": 10, "benign": 10},
  }
  ds = dataset.load(tmp_path / "bmb")
  raw = np.load(BREAST)
  ex = ds.decode(ds.source("val")[0])
  sid = ex["specimen_id"]
  assert sid.startswith("val")
  img = raw["val_images"][int(sid[3:])].astype(np.float32)
  want = (img - img.min()) / (img.max() - img.min())
  np.testing.assert_allclose(ex["images"]["US"][..., 0], want, atol=1e-6)
  assert int(ex["label"]) == int(raw["val_labels"][int(sid[3:])])
  with pytest.raises(folder.DataError, match=r"needs 'train_images'.*\['x'\]"):
    np.savez(tmp_path / "bad.npz", x=np.zeros(3))
    npz.from_npz(tmp_path / "bad.npz", tmp_path / "bad")


# ---- bad input: one clear error naming the file or field, nothing left behind ----


def test_missing_or_malformed_dataset_json(folder_copy):
  (folder_copy / "dataset.json").unlink()
  build_fails(folder_copy, r"dataset.json: not found")
  (folder_copy / "dataset.json").write_text('{"name": "x", "modalities": [')
  build_fails(folder_copy, r"dataset.json: malformed JSON")
  (folder_copy / "dataset.json").write_text('{"name": "x", "classes": ["a", "b"]}')
  build_fails(folder_copy, r"dataset.json: field 'modalities' missing")
  (folder_copy / "dataset.json").write_text(
    json.dumps({"name": "x", "modalities": [{"name": "WL", "channels": 0}], "classes": ["a", "b"]})
  )
  build_fails(folder_copy, r"dataset.json: modalities\[0\].channels must be a positive integer")


def test_missing_modality(folder_copy):
  (folder_copy / "S0005" / "NIR2.png").unlink()
  build_fails(folder_copy, r"S0005/NIR2\.\{png,.*missing modality 'NIR2' for specimen 'S0005'")


def test_missing_specimen_folder(folder_copy):
  shutil.rmtree(folder_copy / "S0007")
  build_fails(folder_copy, r"S0007: specimen folder missing \(manifest.csv line 8")


def test_truncated_and_unreadable_images(folder_copy):
  path = folder_copy / "S0003" / "NIR1.png"
  data = path.read_bytes()
  path.write_bytes(data[: len(data) // 2])
  build_fails(folder_copy, r"S0003/NIR1.png: unreadable or truncated image")
  path.write_bytes(b"not an image at all")
  build_fails(folder_copy, r"S0003/NIR1.png: unreadable or truncated image")


def test_modalities_of_different_sizes(folder_copy):
  Image.fromarray(np.zeros((20, 32), np.uint16)).save(folder_copy / "S0002" / "NIR2.png")
  build_fails(
    folder_copy, r"S0002: modalities have different sizes \(WL 32x32, NIR1 32x32, NIR2 20x32\)"
  )


def test_wrong_channel_count(folder_copy):
  Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(folder_copy / "S0004" / "NIR1.png")
  build_fails(folder_copy, r"S0004/NIR1.png: 3 channel\(s\), but dataset.json says NIR1 has 1")


def test_unknown_label(folder_copy):
  rewrite_manifest(folder_copy, lambda rows: rows[:3] + [[*rows[3][:2], "V"]] + rows[4:])
  build_fails(folder_copy, r"manifest.csv line 4: unknown label 'V' \(classes: I, II, III, IV\)")


def test_duplicate_specimen_id(folder_copy):
  rewrite_manifest(folder_copy, lambda rows: rows + [rows[2]])
  build_fails(
    folder_copy, r"manifest.csv line 26: duplicate specimen_id 'S0002' \(first on line 3\)"
  )


def test_patient_in_two_splits(folder_copy):
  def edit(rows):
    out = [rows[0] + ["split"]] + [r + ["train"] for r in rows[1:]]
    pid = out[1][1]
    later = next(i for i in range(2, len(out)) if out[i][1] == pid)
    out[later][3] = "test"
    return out

  rewrite_manifest(folder_copy, edit)
  build_fails(folder_copy, r"patient 'P\d+' is in split 'test' here and in 'train' on line 2")


def test_nan_in_float_image(folder_copy):
  img = np.ones((32, 32), np.float32)
  img[4, 5] = np.nan
  (folder_copy / "S0006" / "NIR1.png").unlink()
  Image.fromarray(img).save(folder_copy / "S0006" / "NIR1.tif")
  build_fails(folder_copy, r"S0006/NIR1.tif: contains NaN or Inf")


def test_empty_training_class_warns(folder_copy, tmp_path):
  def drop_iv(rows):
    return [rows[0]] + [r if r[2] != "IV" else [*r[:2], "III"] for r in rows[1:]]

  rewrite_manifest(folder_copy, drop_iv)
  with pytest.warns(
    folder.DataWarning, match=r"class\(es\) \['IV'\] have no specimen in the train"
  ):
    builder.build(folder_copy, tmp_path / "out", SMALL)
  assert dataset.load(tmp_path / "out").class_counts["train"]["IV"] == 0


def test_existing_output_and_not_a_dataset(synth_folder, tmp_path):
  (tmp_path / "out").mkdir()
  (tmp_path / "out" / "keep.txt").write_text("mine")
  with pytest.raises(folder.DataError, match="exists and is not empty"):
    builder.build(synth_folder, tmp_path / "out", SMALL)
  assert (tmp_path / "out" / "keep.txt").read_text() == "mine"
  with pytest.raises(folder.DataError, match="not a built dlsjax dataset"):
    dataset.load(tmp_path / "out")


def _npz(path, **arrays):
  np.savez(path, **arrays)
  return path


@pytest.mark.parametrize(
  "shape,dtype,labels_2d",
  [((28, 28), np.uint8, True), ((28, 28, 1), np.float32, False), ((28, 28, 3), np.float64, True)],
)
def test_from_npz_label_shapes_dtypes_and_channels(tmp_path, shape, dtype, labels_2d):
  rng = np.random.default_rng(0)
  raw = rng.integers(0, 256, (12, *shape)).astype(np.uint8)
  images = raw if dtype == np.uint8 else (raw / 255.0).astype(dtype)  # floats in [0, 1]
  labels = np.arange(12) % 3
  lab = labels[:, None] if labels_2d else labels
  path = _npz(tmp_path / "x.npz", train_images=images, train_labels=lab,
              val_images=images[:6], val_labels=lab[:6])  # fmt: skip
  desc = npz.from_npz(path, tmp_path / "out", modality="M")
  assert desc["modalities"][0]["channels"] == (3 if shape[-1:] == (3,) else 1)
  assert desc["classes"] == ["0", "1", "2"]
  back = np.asarray(Image.open(tmp_path / "out" / "train00004" / "M.png"))
  np.testing.assert_array_equal(back, raw[4].squeeze())  # float [0, 1] -> the same uint8
  rows = (tmp_path / "out" / "manifest.csv").read_text().splitlines()[1:]
  assert [r.split(",")[2] for r in rows[:12]] == [str(x) for x in labels]


def test_from_npz_without_val_gets_a_seeded_stratified_val_split(tmp_path, caplog):
  labels = np.array([0] * 30 + [1] * 10)
  images = np.arange(40, dtype=np.uint8)[:, None, None] * np.ones((1, 8, 8), np.uint8)
  path = _npz(tmp_path / "x.npz", train_images=images, train_labels=labels,
              test_images=images[:4], test_labels=labels[:4])  # fmt: skip

  def val_ids(out):
    rows = [r.split(",") for r in (out / "manifest.csv").read_text().splitlines()[1:]]
    return [(r[2], int(np.asarray(Image.open(out / r[0] / "image.png"))[0, 0])) for r in rows
            if r[3] == "val"]  # fmt: skip

  with caplog.at_level(logging.INFO):
    npz.from_npz(path, tmp_path / "a", val_fraction=0.2, val_seed=3)
  assert "no val split" in caplog.text
  a = val_ids(tmp_path / "a")
  assert sorted(c for c, _ in a) == ["0"] * 6 + ["1"] * 2  # 20% of each class
  npz.from_npz(path, tmp_path / "b", val_fraction=0.2, val_seed=3)
  npz.from_npz(path, tmp_path / "c", val_fraction=0.2, val_seed=4)
  assert val_ids(tmp_path / "b") == a and val_ids(tmp_path / "c") != a
  rows = (tmp_path / "a" / "manifest.csv").read_text().splitlines()[1:]
  assert (
    sum(r.endswith(",train") for r in rows) == 32 and sum(r.endswith(",test") for r in rows) == 4
  )


def test_from_npz_bad_input_names_the_keys_and_leaves_nothing(tmp_path):
  bad = _npz(tmp_path / "bad.npz", images=np.zeros((2, 4, 4)), y=np.zeros(2))
  with pytest.raises(folder.DataError, match=r"needs 'train_images'.*\['images', 'y'\]"):
    npz.from_npz(bad, tmp_path / "o1")
  nolab = _npz(tmp_path / "nolab.npz", train_images=np.zeros((2, 4, 4), np.uint8))
  with pytest.raises(folder.DataError, match=r"train_images without train_labels.*train_images"):
    npz.from_npz(nolab, tmp_path / "o2")
  multi = _npz(tmp_path / "m.npz", train_images=np.zeros((2, 4, 4), np.uint8),
               train_labels=np.zeros((2, 3)))  # fmt: skip
  with pytest.raises(folder.DataError, match=r"train_labels has shape \(2, 3\)"):
    npz.from_npz(multi, tmp_path / "o3")
  rng = _npz(tmp_path / "r.npz", train_images=np.full((2, 4, 4), 300.0),
             train_labels=np.zeros(2, np.int64))  # fmt: skip
  with pytest.raises(folder.DataError, match=r"train_images: values in \[300, 300\]"):
    npz.from_npz(rng, tmp_path / "o4")
  assert not any(p.name.startswith("o") for p in tmp_path.iterdir())
