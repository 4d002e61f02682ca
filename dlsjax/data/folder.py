"""The on-disk dataset format users bring, read and validated.

A dataset folder::

    dataset.json   {"name", "modalities": [{"name", "channels", "fluorescence"}, ...],
                    "classes": ["I", "II", ...]}
    manifest.csv   specimen_id,patient_id,label[,split]
    <specimen_id>/<modality name>.<png|jpg|jpeg|tif|tiff>

Every problem raises :class:`DataError` whose message starts with the file
(and line or field) at fault, e.g. ``manifest.csv line 7: unknown label 'V'``.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import pathlib
import shutil
import tempfile
import warnings

import numpy as np
from PIL import Image, ImageFile

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
SPLITS = ("train", "val", "test")


class DataError(ValueError):
  """A dataset folder, file or field that cannot be used; the message names it."""


class DataWarning(UserWarning):
  """Usable but suspicious data (e.g. a class with no training specimen)."""


@dataclasses.dataclass(frozen=True)
class ModalityInfo:
  name: str
  channels: int
  fluorescence: bool


@dataclasses.dataclass(frozen=True)
class Description:
  """Contents of ``dataset.json``."""

  name: str
  modalities: tuple[ModalityInfo, ...]
  classes: tuple[str, ...]

  def to_dict(self) -> dict:
    return {
      "name": self.name,
      "modalities": [dataclasses.asdict(m) for m in self.modalities],
      "classes": list(self.classes),
    }

  @classmethod
  def from_dict(cls, d: dict, where: str = "dataset.json") -> Description:
    if not isinstance(d, dict):
      raise DataError(f"{where}: expected a JSON object, got {type(d).__name__}")
    for key in ("name", "modalities", "classes"):
      if key not in d:
        raise DataError(f"{where}: field {key!r} missing")
    if not isinstance(d["name"], str) or not d["name"]:
      raise DataError(f"{where}: field 'name' must be a non-empty string")
    mods = d["modalities"]
    if not isinstance(mods, list) or not mods:
      raise DataError(f"{where}: field 'modalities' must be a non-empty list")
    modalities = []
    for i, m in enumerate(mods):
      field = f"{where}: modalities[{i}]"
      if not isinstance(m, dict) or "name" not in m or "channels" not in m:
        raise DataError(f"{field} must be an object with 'name' and 'channels'")
      if not isinstance(m["name"], str) or not m["name"] or "/" in m["name"]:
        raise DataError(f"{field}.name must be a non-empty string without '/'")
      ch = m["channels"]
      if not isinstance(ch, int) or isinstance(ch, bool) or ch < 1:
        raise DataError(f"{field}.channels must be a positive integer, got {ch!r}")
      fl = m.get("fluorescence", False)
      if not isinstance(fl, bool):
        raise DataError(f"{field}.fluorescence must be true or false, got {fl!r}")
      modalities.append(ModalityInfo(m["name"], ch, fl))
    names = [m.name for m in modalities]
    if len(set(names)) != len(names):
      raise DataError(f"{where}: duplicate modality names {names}")
    classes = d["classes"]
    if (
      not isinstance(classes, list)
      or len(classes) < 2
      or not all(isinstance(c, str) and c for c in classes)
    ):
      raise DataError(f"{where}: field 'classes' must be a list of at least 2 non-empty strings")
    if len(set(classes)) != len(classes):
      raise DataError(f"{where}: duplicate class names {classes}")
    return cls(d["name"], tuple(modalities), tuple(classes))


@dataclasses.dataclass(frozen=True)
class Specimen:
  """One row of ``manifest.csv`` (``line`` is its line number in the file)."""

  specimen_id: str
  patient_id: str
  label: int
  split: str | None
  line: int


def read_description(root: str | pathlib.Path) -> Description:
  path = pathlib.Path(root) / "dataset.json"
  if not path.is_file():
    raise DataError(f"{path}: not found (every dataset folder needs a dataset.json)")
  try:
    d = json.loads(path.read_text())
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise DataError(f"{path}: malformed JSON ({e})") from None
  return Description.from_dict(d, where=str(path))


def read_manifest(root: str | pathlib.Path, desc: Description) -> list[Specimen]:
  """Rows of ``manifest.csv``; checks labels, ids, splits and patients."""
  path = pathlib.Path(root) / "manifest.csv"
  if not path.is_file():
    raise DataError(f"{path}: not found (columns: specimen_id,patient_id,label[,split])")
  with path.open(newline="") as f:
    reader = csv.DictReader(f)
    header = reader.fieldnames or []
    missing = [c for c in ("specimen_id", "patient_id", "label") if c not in header]
    if missing:
      raise DataError(f"{path}: missing column(s) {missing}; header is {header}")
    has_split = "split" in header
    rows, first_line, patient_split = [], {}, {}
    for row in reader:
      line = reader.line_num
      sid, pid = (row["specimen_id"] or "").strip(), (row["patient_id"] or "").strip()
      label = (row["label"] or "").strip()
      where = f"{path} line {line}"
      if not sid or sid in (".", "..") or "/" in sid or "\\" in sid:
        raise DataError(f"{where}: invalid specimen_id {sid!r}")
      if not pid:
        raise DataError(f"{where}: empty patient_id for specimen {sid!r}")
      if sid in first_line:
        raise DataError(f"{where}: duplicate specimen_id {sid!r} (first on line {first_line[sid]})")
      first_line[sid] = line
      if label not in desc.classes:
        raise DataError(f"{where}: unknown label {label!r} (classes: {', '.join(desc.classes)})")
      split = None
      if has_split:
        split = (row["split"] or "").strip()
        if split not in SPLITS:
          raise DataError(f"{where}: unknown split {split!r} (one of {', '.join(SPLITS)})")
        if pid in patient_split and patient_split[pid][0] != split:
          other, other_line = patient_split[pid]
          raise DataError(
            f"{where}: patient {pid!r} is in split {split!r} here and in {other!r} "
            f"on line {other_line}; a patient must stay in one split"
          )
        patient_split.setdefault(pid, (split, line))
      rows.append(Specimen(sid, pid, desc.classes.index(label), split, line))
  if not rows:
    raise DataError(f"{path}: no specimens")
  return rows


def modality_path(root: str | pathlib.Path, specimen_id: str, modality: str) -> pathlib.Path:
  folder = pathlib.Path(root) / specimen_id
  found = [
    folder / f"{modality}{s}" for s in IMAGE_SUFFIXES if (folder / f"{modality}{s}").is_file()
  ]
  if not found:
    raise DataError(
      f"{folder}/{modality}.{{{','.join(s[1:] for s in IMAGE_SUFFIXES)}}}: "
      f"missing modality {modality!r} for specimen {specimen_id!r}"
    )
  if len(found) > 1:
    raise DataError(f"{folder}: several files for modality {modality!r}: {[p.name for p in found]}")
  return found[0]


def read_image(path: str | pathlib.Path) -> np.ndarray:
  """Decode an image to ``[H, W, C]`` in its own dtype (uint8, uint16 or float32).

  8/16-bit PNG and TIFF, float32 TIFF, JPEG; truncated files are an error.
  """
  path = pathlib.Path(path)
  ImageFile.LOAD_TRUNCATED_IMAGES = False
  try:
    with Image.open(path) as img:
      img.load()
      if img.mode in ("P", "PA", "1", "CMYK", "YCbCr"):
        img = img.convert("RGBA" if img.mode == "PA" else "RGB" if img.mode != "1" else "L")
      arr = np.asarray(img)
  except Exception as e:  # PIL raises OSError, SyntaxError, ValueError... for bad files
    raise DataError(f"{path}: unreadable or truncated image ({type(e).__name__}: {e})") from None
  if arr.dtype == np.int32:  # PIL's mode "I" for 16-bit PNGs
    if arr.min() >= 0 and arr.max() <= 65535:
      arr = arr.astype(np.uint16)
    else:
      arr = arr.astype(np.float32)
  elif arr.dtype == np.bool_:
    arr = arr.astype(np.uint8) * 255
  elif arr.dtype.kind == "f":
    arr = arr.astype(np.float32)
    if not np.all(np.isfinite(arr)):
      raise DataError(f"{path}: contains NaN or Inf values")
  elif arr.dtype.kind in "ui" and arr.dtype.itemsize > 2:
    arr = arr.astype(np.float32)
  else:
    arr = arr.astype(arr.dtype.newbyteorder("="))
  if arr.ndim == 2:
    arr = arr[..., None]
  if arr.ndim != 3 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise DataError(f"{path}: unexpected image shape {arr.shape}")
  return arr


def read_specimen(
  root: str | pathlib.Path, desc: Description, specimen: Specimen
) -> dict[str, np.ndarray]:
  """All modalities of one specimen, checked for channels and equal sizes."""
  out, sizes = {}, {}
  for m in desc.modalities:
    path = modality_path(root, specimen.specimen_id, m.name)
    arr = read_image(path)
    if arr.shape[-1] != m.channels:
      raise DataError(
        f"{path}: {arr.shape[-1]} channel(s), but dataset.json says {m.name} has {m.channels}"
      )
    out[m.name], sizes[m.name] = arr, arr.shape[:2]
  if len(set(sizes.values())) > 1:
    listed = ", ".join(f"{k} {h}x{w}" for k, (h, w) in sizes.items())
    raise DataError(
      f"{pathlib.Path(root) / specimen.specimen_id}: modalities have different sizes ({listed})"
    )
  return out


def assign_splits(
  rows: list[Specimen],
  *,
  test_patients: int,
  seed: int,
  where: str = "manifest.csv",
  candidates: int = 200,
) -> list[Specimen]:
  """Rows with a split: the manifest's, or a seeded, class-aware patient-level split.

  Without a split column, ``test_patients`` patients (paper: 5 of 24) go to
  ``test`` with all their specimens, the rest to ``train``; no patient is in two
  splits. Among ``candidates`` patient sets drawn with ``seed``, the one is
  kept that leaves no class out of train (then out of test) and whose test
  class proportions are closest to the whole set's, so small datasets with
  rare grades still get usable splits. Deterministic given ``seed``.
  """
  if all(r.split is not None for r in rows):
    return rows
  patients = sorted({r.patient_id for r in rows})
  if not 0 < test_patients < len(patients):
    raise DataError(
      f"{where}: cannot put {test_patients} of {len(patients)} patients in the test split "
      "(set data.test_patients, or add a split column)"
    )
  n_cls = max(r.label for r in rows) + 1
  per_patient = np.zeros((len(patients), n_cls))
  for r in rows:
    per_patient[patients.index(r.patient_id), r.label] += 1
  total = per_patient.sum(0)
  rng = np.random.default_rng(seed)
  best, best_score = None, None
  for _ in range(candidates):
    chosen = rng.permutation(len(patients))[:test_patients]
    test = per_patient[chosen].sum(0)
    train = total - test
    score = (
      1000 * np.sum((total > 0) & (train == 0))
      + 10 * np.sum((total > 0) & (test == 0))
      + np.abs(test / test.sum() - total / total.sum()).sum()
    )
    if best_score is None or score < best_score:
      best, best_score = chosen, score
  test_ids = {patients[i] for i in best}
  return [
    dataclasses.replace(r, split="test" if r.patient_id in test_ids else "train") for r in rows
  ]


def class_counts(rows: list[Specimen], desc: Description) -> dict[str, dict[str, int]]:
  """``{split: {class: count}}`` in split order."""
  out = {}
  for split in SPLITS:
    labels = [r.label for r in rows if r.split == split]
    if labels:
      counts = np.bincount(labels, minlength=len(desc.classes))
      out[split] = {c: int(n) for c, n in zip(desc.classes, counts, strict=True)}
  return out


def validate(root: str | pathlib.Path, *, test_patients: int = 5, seed: int = 0):
  """Read and check a folder's description, manifest and files (images are not decoded).

  Returns ``(description, rows with splits)``; warns about classes absent from
  the training split.
  """
  root = pathlib.Path(root)
  if not root.is_dir():
    raise DataError(f"{root}: not a directory")
  desc = read_description(root)
  rows = read_manifest(root, desc)
  for r in rows:
    if not (root / r.specimen_id).is_dir():
      raise DataError(
        f"{root / r.specimen_id}: specimen folder missing "
        f"(manifest.csv line {r.line}, specimen {r.specimen_id!r})"
      )
    for m in desc.modalities:
      modality_path(root, r.specimen_id, m.name)
  rows = assign_splits(
    rows, test_patients=test_patients, seed=seed, where=str(root / "manifest.csv")
  )
  counts = class_counts(rows, desc)
  empty = [c for c, n in counts.get("train", {}).items() if n == 0]
  if "train" not in counts:
    raise DataError(f"{root / 'manifest.csv'}: no specimen in the train split")
  if empty:
    warnings.warn(
      f"{root / 'manifest.csv'}: class(es) {empty} have no specimen in the train split",
      DataWarning,
      stacklevel=2,
    )
  return desc, rows


@contextlib.contextmanager
def staging_dir(out: pathlib.Path):
  """A temporary folder beside ``out`` that becomes ``out`` only if the block succeeds."""
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.writing-", dir=out.parent))
  try:
    yield tmp
    if out.exists():
      out.rmdir()  # empty (checked by the caller)
    tmp.rename(out)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
