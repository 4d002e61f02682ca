"""Convert a MedMNIST-style ``.npz`` into the dataset folder format.

The npz holds ``{split}_images`` (``[N, H, W]``, ``[N, H, W, 1]`` or
``[N, H, W, 3]``; uint8, or float in [0, 1] or [0, 255]) and ``{split}_labels``
(``[N]`` or ``[N, 1]``, integers) for ``split`` in train, val, test. The result
has one modality and a ``split`` column taken from the npz. MedMNIST has no
patient ids, so each image is its own patient (``patient_id`` =
``specimen_id``); the official splits are kept as they are. An npz without a
val split gets one: a seeded, class-stratified ``val_fraction`` of train
(logged), so model selection never has to touch the test split.
"""

from __future__ import annotations

import csv
import json
import logging
import pathlib

import numpy as np
from PIL import Image

from dlsjax.data.folder import SPLITS, DataError, staging_dir

log = logging.getLogger(__name__)


def from_npz(
  npz_path: str | pathlib.Path,
  out: str | pathlib.Path,
  *,
  modality: str = "image",
  classes: list[str] | None = None,
  name: str | None = None,
  val_fraction: float = 0.1,
  val_seed: int = 0,
) -> dict:
  """Write the folder; returns its ``dataset.json`` contents."""
  npz_path, out = pathlib.Path(npz_path), pathlib.Path(out)
  try:
    data = np.load(npz_path)
  except (OSError, ValueError) as e:
    raise DataError(f"{npz_path}: cannot read npz ({e})") from None
  splits = [s for s in SPLITS if f"{s}_images" in data]
  if "train" not in splits:
    raise DataError(
      f"{npz_path}: needs 'train_images' and 'train_labels' (and optionally val_*, test_*); "
      f"it has keys {sorted(data.files)}"
    )
  arrays = {}
  for s in splits:
    if f"{s}_labels" not in data:
      raise DataError(f"{npz_path}: {s}_images without {s}_labels (keys: {sorted(data.files)})")
    images, labels = data[f"{s}_images"], np.asarray(data[f"{s}_labels"])
    if labels.ndim == 2 and labels.shape[1] == 1:
      labels = labels[:, 0]
    if labels.ndim != 1:
      raise DataError(
        f"{npz_path}: {s}_labels has shape {labels.shape}; expected [N] or [N, 1] class indices "
        "(multi-label tasks are not supported)"
      )
    if len(images) != len(labels):
      raise DataError(f"{npz_path}: {len(images)} {s}_images but {len(labels)} {s}_labels")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
      raise DataError(f"{npz_path}: {s}_images has shape {images.shape}; expected [N,H,W(,C)]")
    if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
      raise DataError(f"{npz_path}: {s}_labels are not whole numbers (class indices expected)")
    if labels.dtype.kind not in "iuf" or (len(labels) and labels.min() < 0):
      raise DataError(f"{npz_path}: {s}_labels must be class indices >= 0 ({labels.dtype})")
    arrays[s] = (_to_uint8(images, f"{npz_path}: {s}_images"), labels.astype(np.int64))
  if "val" not in arrays:
    arrays["train"], arrays["val"] = _split_val(*arrays["train"], val_fraction, val_seed)
    splits = [s for s in SPLITS if s in arrays]
    log.info(
      "%s: no val split; %d of the %d training images (seed %d, stratified by class) are val",
      npz_path, len(arrays["val"][1]), len(arrays["val"][1]) + len(arrays["train"][1]), val_seed,
    )  # fmt: skip
  n_classes = int(max(lab.max() for _, lab in arrays.values())) + 1
  classes = list(classes) if classes else [str(i) for i in range(n_classes)]
  if len(classes) < n_classes:
    raise DataError(f"{npz_path}: labels go up to {n_classes - 1} but only {len(classes)} classes")
  channels = 3 if arrays[splits[0]][0].ndim == 4 and arrays[splits[0]][0].shape[-1] == 3 else 1
  if out.exists() and any(out.iterdir()):
    raise DataError(f"{out}: exists and is not empty")
  with staging_dir(out) as tmp:
    return _write(tmp, arrays, splits, classes, channels, modality, name or npz_path.stem)


def _to_uint8(images: np.ndarray, where: str) -> np.ndarray:
  """uint8 as stored; float images in [0, 1] are scaled by 255, in [0, 255] rounded."""
  if images.dtype == np.uint8:
    return images
  if images.dtype.kind not in "iuf":
    raise DataError(f"{where}: dtype {images.dtype}; expected uint8 or float images")
  x = images.astype(np.float64)
  if not np.all(np.isfinite(x)):
    raise DataError(f"{where}: contains NaN or Inf")
  lo, hi = float(x.min()), float(x.max())
  if lo < 0 or hi > 255:
    raise DataError(f"{where}: values in [{lo:g}, {hi:g}]; expected [0, 1] or [0, 255]")
  if images.dtype.kind == "f" and hi <= 1.0:
    x = x * 255.0
  return np.round(x).astype(np.uint8)


def _split_val(images, labels, fraction: float, seed: int):
  """``(train, val)``: a seeded ``fraction`` of each class moved to val (at least one each)."""
  if not 0 < fraction < 1:
    raise DataError(f"val_fraction must be in (0, 1), got {fraction}")
  rng = np.random.default_rng(seed)
  val = []
  for c in np.unique(labels):
    idx = rng.permutation(np.flatnonzero(labels == c))
    if len(idx) > 1:
      val.extend(idx[: max(1, round(fraction * len(idx)))])
  is_val = np.zeros(len(labels), bool)
  is_val[val] = True
  return (images[~is_val], labels[~is_val]), (images[is_val], labels[is_val])


def _write(out, arrays, splits, classes, channels, modality, name) -> dict:
  desc = {
    "name": name,
    "modalities": [{"name": modality, "channels": channels, "fluorescence": False}],
    "classes": classes,
  }
  (out / "dataset.json").write_text(json.dumps(desc, indent=2))
  with (out / "manifest.csv").open("w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["specimen_id", "patient_id", "label", "split"])
    for s in splits:
      images, labels = arrays[s]
      for i, (img, lab) in enumerate(zip(images, labels, strict=True)):
        sid = f"{s}{i:05d}"
        (out / sid).mkdir()
        img = np.asarray(img)
        Image.fromarray(img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img).save(
          out / sid / f"{modality}.png"
        )
        w.writerow([sid, sid, classes[lab], s])
  return desc
