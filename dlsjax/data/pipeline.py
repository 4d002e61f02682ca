"""Input pipeline: grain datasets of host batches from a built dataset.

A batch is ``{"images": {modality: f32[B, H, W, C]}, "label": i32[B],
"target": f32[B, K], "mask": bool[B]}``, one global batch on the host (the
step's device layout is ``sharding.Layout.shard_batch``'s job). ``target`` is the one-hot label,
mixed by CutMix when that is on; ``mask`` is False on the padding of the last
evaluation batch.

Everything is deterministic given the seed: each epoch has its own shuffle and
augmentation seeds derived from ``(seed, epoch)``, and batch ``i`` of an epoch
is random access (``dataset[i]``), so a resumed run continues from the exact
batch it stopped at (``start=``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence

import grain
import numpy as np

from dlsjax.data import augment
from dlsjax.data.dataset import Dataset


@dataclasses.dataclass(frozen=True)
class Augment:
  """Training augmentation (paper: 8-pixel crop padding, both flips; CutMix 1.0 in training)."""

  crop_padding: int = 8
  hflip: bool = True
  vflip: bool = True
  cutmix_beta: float = 0.0  # 0: off (search); 1.0 for the derived network's training
  cutmix_prob: float = 1.0

  @classmethod
  def from_config(cls, c) -> Augment:
    from dlsjax.configs import dataclass_from_config

    return dataclass_from_config(cls, c)


class Subset:
  """Random-access view of ``source`` at ``indices``, decoded by ``decode``."""

  def __init__(self, source, indices: Sequence[int], decode):
    self._source, self._indices, self._decode = source, np.asarray(indices, np.int64), decode

  def __len__(self) -> int:
    return len(self._indices)

  def __getitem__(self, i: int):
    return self._decode(self._source[int(self._indices[i])])


def search_halves(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """The search phase's sample-level split of the training set (paper Section II-B).

  A seeded permutation; the first half updates the weights, the second the
  alphas (as DARTS: ``split = n // 2``).
  """
  order = np.random.default_rng(seed).permutation(n)
  return np.sort(order[: n // 2]), np.sort(order[n // 2 :])


class _Pick:
  """Random-access view of ``data`` at ``positions`` (a host's share of the global batches)."""

  def __init__(self, data, positions: np.ndarray):
    self._data, self._positions = data, positions

  def __len__(self) -> int:
    return len(self._positions)

  def __getitem__(self, i: int):
    return self._data[int(self._positions[i])]


def host_positions(steps: int, batch_size: int, host: tuple[int, int]) -> np.ndarray:
  """Positions in the global example order that host ``index`` of ``count`` reads.

  Host ``index`` takes rows ``[index * B/count, (index + 1) * B/count)`` of every
  global batch of ``B``, so the hosts together see exactly the batches of a
  one-host run, and each device the same rows as in a one-host run with as
  many devices (the devices of process 0 come first in the global order).
  """
  index, count = host
  if batch_size % count:
    raise ValueError(f"a global batch of {batch_size} does not split over {count} hosts")
  per = batch_size // count
  return (np.arange(steps)[:, None] * batch_size + index * per + np.arange(per)[None]).ravel()


def epoch_seed(seed: int, epoch: int, stream: int = 0) -> int:
  return int(np.random.SeedSequence([seed, epoch, stream]).generate_state(1)[0])


def _stack(examples: Sequence[dict]) -> dict:
  return {
    "images": {k: np.stack([e["images"][k] for e in examples]) for k in examples[0]["images"]},
    "label": np.asarray([e["label"] for e in examples], np.int32),
    "target": np.stack([e["target"] for e in examples]).astype(np.float32),
    "mask": np.asarray([e["mask"] for e in examples], bool),
  }


def _with_target(num_classes: int):
  def fn(ex):
    return {
      "images": ex["images"],
      "label": ex["label"],
      "target": np.eye(num_classes, dtype=np.float32)[ex["label"]],
      "mask": True,
    }

  return fn


def train_batches(
  ds: Dataset,
  source,
  indices: Sequence[int] | None = None,
  *,
  batch_size: int,
  seed: int,
  epoch: int,
  aug: Augment = Augment(),
  resolution: int | None = None,
  host: tuple[int, int] = (0, 1),
) -> grain.MapDataset:
  """One epoch of shuffled, augmented, full batches (the last partial batch is dropped).

  ``batch_size`` is the global batch. ``host=(index, count)`` keeps this
  host's rows of each batch (:func:`host_positions`): the shuffle and each
  example's augmentation are those of the one-host run, so a run on several
  hosts reads the same data as one host with all the devices; only CutMix
  pairs images within a host's share. ``len(result)`` is the number of steps;
  ``result[i]`` is (this host's part of) batch ``i``.
  """
  indices = np.arange(len(source)) if indices is None else indices
  if len(indices) < batch_size:
    raise ValueError(f"{len(indices)} examples cannot fill one batch of {batch_size}")
  k = len(ds.desc.classes)
  crop = _crop_fn(aug)
  # A seeded permutation per epoch (cheaper per element than grain's index shuffle).
  order = np.random.default_rng(epoch_seed(seed, epoch, 0)).permutation(np.asarray(indices))
  examples = (
    grain.MapDataset.source(Subset(source, order, lambda r: ds.decode(r, resolution)))
    .random_map(
      lambda ex, rng: {**ex, "images": crop(ex["images"], rng)}, seed=epoch_seed(seed, epoch, 1)
    )
    .map(_with_target(k))
  )
  if host[1] > 1:
    positions = host_positions(len(order) // batch_size, batch_size, host)
    examples = grain.MapDataset.source(_Pick(examples, positions))
    batch_size //= host[1]
  data = examples.batch(batch_size, drop_remainder=True, batch_fn=_stack)
  if aug.cutmix_beta > 0:

    def mix(batch, rng):
      images, target = augment.cutmix(
        batch["images"], batch["target"], rng, beta=aug.cutmix_beta, prob=aug.cutmix_prob
      )
      return {**batch, "images": images, "target": target}

    data = data.random_map(mix, seed=epoch_seed(seed, epoch, 2))
  return data


def _crop_fn(aug: Augment):
  def crop(images, rng):
    return augment.random_crop_flip(
      images, rng, padding=aug.crop_padding, hflip=aug.hflip, vflip=aug.vflip
    )

  return crop


def eval_batches(
  ds: Dataset,
  source,
  indices: Sequence[int] | None = None,
  *,
  batch_size: int,
  resolution: int | None = None,
) -> grain.MapDataset:
  """Every example once, in order; the last batch is padded and ``mask`` marks real rows."""
  indices = np.arange(len(source)) if indices is None else indices
  k = len(ds.desc.classes)

  def pad(b):
    n = len(b["label"])
    if n == batch_size:
      return b

    def p(x):
      return np.concatenate([x, np.zeros((batch_size - n, *x.shape[1:]), x.dtype)])

    return {
      "images": {m: p(v) for m, v in b["images"].items()},
      **{f: p(b[f]) for f in ("label", "target", "mask")},
    }

  return (
    grain.MapDataset.source(Subset(source, indices, lambda r: ds.decode(r, resolution)))
    .map(_with_target(k))
    .batch(batch_size, drop_remainder=False, batch_fn=_stack)
    .map(pad)
  )


def _copy_arrays(batch: dict) -> dict:
  return {k: _copy_arrays(v) if isinstance(v, dict) else np.array(v) for k, v in batch.items()}


def iterate(
  batches: grain.MapDataset, *, start: int = 0, workers: int = 0, threads: int = 4
) -> Iterator[dict]:
  """Iterate from batch ``start`` with read-ahead threads, or ``workers`` processes."""
  data = batches[start:] if start else batches
  it = data.to_iter_dataset(
    grain.ReadOptions(num_threads=threads, prefetch_buffer_size=2 * threads)
  )
  if workers:
    from absl import flags

    if not flags.FLAGS.is_parsed():  # grain's workers read absl flags; we do not use absl's CLI
      flags.FLAGS.mark_as_parsed()
    it = it.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers))
    # Own copies: grain's shared-memory arrays are released now, not at interpreter exit.
    it = it.map(lambda b: _copy_arrays(b))
  return iter(it)
