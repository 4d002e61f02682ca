"""A built dataset: metadata, random-access splits and decoding of one record."""

from __future__ import annotations

import dataclasses
import json
import pathlib

import numpy as np

from dlsjax.data import builder, folder


@dataclasses.dataclass(frozen=True)
class Dataset:
  """What ``dlsjax data build`` wrote to ``data_dir``."""

  data_dir: pathlib.Path
  desc: folder.Description
  opts: builder.BuildOptions
  class_counts: dict
  meta: dict

  @property
  def splits(self) -> tuple[str, ...]:
    return tuple(self.class_counts)

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(m.name for m in self.desc.modalities)

  def source(self, split: str):
    """Random-access source of decoded records (``len``, ``[i]``) for ``split``."""
    import tensorflow_datasets as tfds

    if split not in self.class_counts:
      raise folder.DataError(f"{self.data_dir}: no split {split!r} (splits: {list(self.splits)})")
    return tfds.builder_from_directory(str(self.data_dir)).as_data_source(split=split)

  def decode(self, record: dict, resolution: int | None = None) -> dict:
    """``{"images": {modality: f32[R, R, C]}, "label": int32, "specimen_id": str}``.

    Raw (``on_the_fly``) records are preprocessed here with the build options;
    ``resolution`` (default: the build's) must match a prebuilt dataset's.
    """
    images = {}
    for m in self.desc.modalities:
      x = np.asarray(record[m.name], np.float32)
      if self.opts.preprocess == "on_the_fly":
        opts = (
          self.opts if resolution is None else dataclasses.replace(self.opts, resolution=resolution)
        )
        sid = _text(record["specimen_id"])
        x = builder.preprocess_specimen({m.name: x}, _one(self.desc, m), opts, sid)[m.name]
      elif x.shape[-1] != self.opts.channels_of(m):  # stored once, duplicated here
        x = np.repeat(x, self.opts.channels_of(m), axis=-1)
      images[m.name] = x
    return {
      "images": images,
      "label": np.int32(record["label"]),
      "specimen_id": _text(record["specimen_id"]),
    }

  def find(self, specimen_id: str, resolution: int | None = None) -> tuple[str, dict]:
    """``(split, decoded example)`` of the specimen with that id, in any split."""
    for split in self.splits:
      src = self.source(split)
      for i in range(len(src)):
        if _text(src[i]["specimen_id"]) == specimen_id:
          return split, self.decode(src[i], resolution)
    raise folder.DataError(f"{self.data_dir}: no specimen {specimen_id!r} in {list(self.splits)}")

  def check_resolution(self, resolution: int) -> None:
    if self.opts.preprocess == "build" and self.opts.resolution != resolution:
      raise folder.DataError(
        f"{self.data_dir}: built at {self.opts.resolution}x{self.opts.resolution} but the model "
        f"expects {resolution}x{resolution}; rebuild with that model.resolution or build with "
        "data.preprocess=on_the_fly"
      )

  def info(self) -> str:
    """Human-readable summary (``dlsjax data info``)."""
    d, o = self.desc, self.opts
    mods = ", ".join(
      f"{m.name} ({m.channels} ch{', fluorescence' if m.fluorescence else ''})"
      for m in d.modalities
    )
    lines = [
      f"dataset   {d.name}  ({self.data_dir})",
      f"source    {self.meta.get('source', '?')}",
      f"modalities {mods}",
      f"classes   {', '.join(d.classes)}",
      f"preprocess {o.preprocess}: {o.resolution}x{o.resolution}, "
      f"single-channel images to {o.gray_channels} channels; "
      f"fluorescence: {o.nonlinear} -> auto-contrast {o.saturated}% -> "
      f"low-pass {o.lowpass_fraction} -> resize -> 0-1; other: resize -> 0-1",
      "",
    ]
    w = max(8, *(len(c) + 2 for c in d.classes))
    lines.append(
      "split  " + "".join(f"{c:>{w}}" for c in d.classes) + f"{'total':>8}{'patients':>10}"
    )
    for split, counts in self.class_counts.items():
      n_pat = len(self.meta.get("patients", {}).get(split, []))
      lines.append(
        f"{split:<7}"
        + "".join(f"{counts[c]:>{w}}" for c in d.classes)
        + f"{sum(counts.values()):>8}{n_pat:>10}"
      )
    size = sum(p.stat().st_size for p in self.data_dir.iterdir() if p.is_file())
    lines.append(f"\non disk   {size / 2**20:.1f} MiB")
    return "\n".join(lines)


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def _one(desc: folder.Description, m: folder.ModalityInfo) -> folder.Description:
  return dataclasses.replace(desc, modalities=(m,))


def describe_location(data_dir) -> str:
  """How a run records its dataset: the URI of a remote one, the absolute path of a local one."""
  from dlsjax import paths

  return str(data_dir) if paths.is_remote(data_dir) else str(pathlib.Path(data_dir).resolve())


def load(data_dir: str | pathlib.Path) -> Dataset:
  """The built dataset at ``data_dir`` (a remote one is read from a local copy, dlsjax.paths)."""
  from dlsjax import paths

  data_dir = paths.local(data_dir, "--data-dir")
  path = data_dir / builder.METADATA
  if not path.is_file():
    raise folder.DataError(
      f"{data_dir}: not a built dlsjax dataset (no {builder.METADATA}); "
      "build one with `dlsjax data build --manual-dir FOLDER --data-dir DIR`"
    )
  try:
    meta = json.loads(path.read_text())
    desc = folder.Description.from_dict(meta["description"], where=f"{path}: description")
    opts = builder.BuildOptions(**meta["options"])
    counts = meta["class_counts"]
  except (json.JSONDecodeError, KeyError, TypeError) as e:
    raise folder.DataError(f"{path}: corrupt metadata ({type(e).__name__}: {e})") from None
  if meta.get("format_version") != builder.FORMAT_VERSION:
    raise folder.DataError(
      f"{path}: format_version {meta.get('format_version')} is not "
      f"{builder.FORMAT_VERSION}; rebuild the dataset"
    )
  return Dataset(data_dir, desc, opts, counts, meta)
