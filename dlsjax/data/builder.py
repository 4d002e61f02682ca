"""Build a dataset folder into a TFDS array_record dataset (no TensorFlow needed).

``build(manual_dir, data_dir, options)`` validates the whole folder first,
writes the dataset into a temporary folder beside ``data_dir`` and moves it
into place only when every specimen was read: a failed build leaves nothing.
Images are stored as float32 ``Tensor`` features (zlib-compressed), either
already preprocessed (``preprocess="build"``, ``[R, R, C]``) or raw
(``preprocess="on_the_fly"``, ``[H, W, C_raw]``, preprocessed by the input
pipeline with the same functions).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import pathlib
import shutil
import tempfile

import numpy as np

from dlsjax import preprocess as pp
from dlsjax.data import folder

log = logging.getLogger(__name__)

METADATA = "dlsjax_dataset.json"
FORMAT_VERSION = 1


@dataclasses.dataclass(frozen=True)
class BuildOptions:
  """How a folder becomes a dataset (``config.data`` holds the defaults)."""

  preprocess: str = "build"  # build | on_the_fly
  resolution: int | None = 64  # None: the images' own size (square)
  gray_channels: int = 3  # single-channel images are duplicated to this many (paper: 3)
  nonlinear: str = "log"
  gamma: float = 0.5
  saturated: float = 0.35
  lowpass_fraction: float | None = 0.5
  test_patients: int = 5  # used when manifest.csv has no split column (paper: 5 of 24)
  split_seed: int = 0

  def __post_init__(self):
    if self.preprocess not in ("build", "on_the_fly"):
      raise ValueError(f"data.preprocess must be 'build' or 'on_the_fly', got {self.preprocess!r}")

  @classmethod
  def from_config(cls, data_cfg, resolution: int) -> BuildOptions:
    from dlsjax.configs import dataclass_from_config

    return dataclass_from_config(cls, data_cfg, resolution=resolution)

  def channels_of(self, m: folder.ModalityInfo) -> int:
    """Channels of modality ``m`` after preprocessing."""
    return self.gray_channels if m.channels == 1 else m.channels

  def modality_config(self, m: folder.ModalityInfo) -> pp.PreprocessConfig:
    return pp.PreprocessConfig(
      fluorescence=m.fluorescence,
      nonlinear=self.nonlinear,
      gamma=self.gamma,
      saturated=self.saturated,
      lowpass_fraction=self.lowpass_fraction,
      resolution=self.resolution,
      channels=self.channels_of(m),
    )


def preprocess_specimen(
  images: dict[str, np.ndarray], desc: folder.Description, opts: BuildOptions, where: str
) -> dict[str, np.ndarray]:
  """The paper's preprocessing of every modality of one specimen."""
  out = {}
  for m in desc.modalities:
    try:
      out[m.name] = pp.preprocess(images[m.name], opts.modality_config(m), f"{where}/{m.name}")
    except pp.PreprocessError as e:
      raise folder.DataError(str(e)) from None
  return out


@functools.cache
def _make_builder_class():
  import tensorflow_datasets as tfds

  class DlsjaxFolder(tfds.core.GeneratorBasedBuilder):
    """A dlsjax dataset folder as TFDS splits (one example per specimen)."""

    VERSION = tfds.core.Version("1.0.0")

    def __init__(self, *, root, desc, rows, opts, **kwargs):
      self._root, self._desc, self._rows, self._opts = root, desc, rows, opts
      super().__init__(**kwargs)

    def _info(self):
      feats = {}
      for m in self._desc.modalities:
        # Preprocessed floats do not compress (zlib would only cost decode time);
        # raw integer intensities stored as float32 do. Single-channel images are
        # stored once and duplicated to ``gray_channels`` when decoded.
        if self._opts.preprocess == "build":
          r = self._opts.resolution
          shape, encoding = (r, r, m.channels), "none"
        else:
          shape, encoding = (None, None, m.channels), "zlib"
        feats[m.name] = tfds.features.Tensor(shape=shape, dtype=np.float32, encoding=encoding)
      feats["label"] = tfds.features.ClassLabel(names=list(self._desc.classes))
      feats["specimen_id"] = tfds.features.Text()
      feats["patient_id"] = tfds.features.Text()
      return tfds.core.DatasetInfo(
        builder=self,
        description=f"dlsjax dataset {self._desc.name!r} built from {self._root}",
        features=tfds.features.FeaturesDict(feats),
      )

    def _split_generators(self, dl_manager):
      splits = [s for s in folder.SPLITS if any(r.split == s for r in self._rows)]
      return {s: self._generate_examples([r for r in self._rows if r.split == s]) for s in splits}

    def _generate_examples(self, rows):
      for r in rows:
        images = folder.read_specimen(self._root, self._desc, r)
        if self._opts.preprocess == "build":
          stored = dataclasses.replace(self._opts, gray_channels=1)
          images = preprocess_specimen(images, self._desc, stored, r.specimen_id)
        else:
          images = {k: v.astype(np.float32) for k, v in images.items()}
        yield (
          r.specimen_id,
          {**images, "label": r.label, "specimen_id": r.specimen_id, "patient_id": r.patient_id},
        )

  return DlsjaxFolder


def build(
  manual_dir: str | pathlib.Path,
  data_dir: str | pathlib.Path,
  opts: BuildOptions = BuildOptions(),
  *,
  overwrite: bool = False,
) -> dict:
  """Validate ``manual_dir`` and write the dataset to ``data_dir``; returns its metadata."""
  manual_dir, data_dir = pathlib.Path(manual_dir), pathlib.Path(data_dir)
  desc, rows = folder.validate(manual_dir, test_patients=opts.test_patients, seed=opts.split_seed)
  if opts.resolution is None:  # model.resolution None: the images' own (square) size
    first = folder.read_specimen(manual_dir, desc, rows[0])
    h, w = next(iter(first.values())).shape[:2]
    if h != w:
      raise folder.DataError(
        f"{manual_dir}/{rows[0].specimen_id}: {h}x{w} images are not square; set model.resolution"
      )
    opts = dataclasses.replace(opts, resolution=int(h))
    log.info("resolution: the images' own, %dx%d", h, w)
  if data_dir.exists() and any(data_dir.iterdir()) and not overwrite:
    raise folder.DataError(f"{data_dir}: exists and is not empty (use --overwrite to replace it)")
  counts = folder.class_counts(rows, desc)
  for split, per_class in counts.items():
    log.info("%s: %d specimens %s", split, sum(per_class.values()), per_class)

  data_dir.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{data_dir.name}.building-", dir=data_dir.parent))
  try:
    import tensorflow_datasets as tfds

    builder = _make_builder_class()(
      root=manual_dir, desc=desc, rows=rows, opts=opts, data_dir=str(tmp / "tfds"),
      file_format="array_record",
    )  # fmt: skip
    builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=str(manual_dir))
    )
    version_dir = pathlib.Path(builder.data_dir)
    meta = {
      "format_version": FORMAT_VERSION,
      "description": desc.to_dict(),
      "options": dataclasses.asdict(opts),
      "class_counts": counts,
      "source": str(manual_dir.resolve()),
      "patients": {s: sorted({r.patient_id for r in rows if r.split == s}) for s in counts},
    }
    (version_dir / METADATA).write_text(json.dumps(meta, indent=2))
    if data_dir.exists():
      shutil.rmtree(data_dir)
    shutil.move(str(version_dir), str(data_dir))
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
  return meta
