"""Convert a MedMNIST-style ``.npz`` into the dataset folder format.

The npz holds ``{split}_images`` (``[N, H, W]`` or ``[N, H, W, 3]``, uint8)
and ``{split}_labels`` (``[N]`` or ``[N, 1]``) for ``split`` in train, val,
test. The result has one modality and a ``split`` column taken from the npz.
MedMNIST has no patient ids, so each image is its own patient (``patient_id``
= ``specimen_id``); the official splits are kept as they are.
"""

from __future__ import annotations

import csv
import json
import pathlib

import numpy as np
from PIL import Image

from dlsjax.data.folder import SPLITS, DataError, staging_dir


def from_npz(
  npz_path: str | pathlib.Path,
  out: str | pathlib.Path,
  *,
  modality: str = "image",
  classes: list[str] | None = None,
  name: str | None = None,
) -> dict:
  """Write the folder; returns its ``dataset.json`` contents."""
  npz_path, out = pathlib.Path(npz_path), pathlib.Path(out)
  try:
    data = np.load(npz_path)
  except (OSError, ValueError) as e:
    raise DataError(f"{npz_path}: cannot read npz ({e})") from None
  splits = [s for s in SPLITS if f"{s}_images" in data]
  if not splits:
    raise DataError(f"{npz_path}: no '<split>_images' arrays (keys: {sorted(data.files)})")
  arrays = {}
  for s in splits:
    if f"{s}_labels" not in data:
      raise DataError(f"{npz_path}: {s}_images without {s}_labels")
    images, labels = data[f"{s}_images"], np.asarray(data[f"{s}_labels"]).reshape(-1)
    if len(images) != len(labels):
      raise DataError(f"{npz_path}: {len(images)} {s}_images but {len(labels)} {s}_labels")
    if images.ndim not in (3, 4) or (images.ndim == 4 and images.shape[-1] not in (1, 3)):
      raise DataError(f"{npz_path}: {s}_images has shape {images.shape}; expected [N,H,W(,C)]")
    arrays[s] = (images, labels.astype(np.int64))
  n_classes = int(max(lab.max() for _, lab in arrays.values())) + 1
  classes = list(classes) if classes else [str(i) for i in range(n_classes)]
  if len(classes) < n_classes:
    raise DataError(f"{npz_path}: labels go up to {n_classes - 1} but only {len(classes)} classes")
  channels = 3 if arrays[splits[0]][0].ndim == 4 and arrays[splits[0]][0].shape[-1] == 3 else 1
  if out.exists() and any(out.iterdir()):
    raise DataError(f"{out}: exists and is not empty")
  with staging_dir(out) as tmp:
    return _write(tmp, arrays, splits, classes, channels, modality, name or npz_path.stem)


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
