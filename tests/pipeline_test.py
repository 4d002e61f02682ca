"""Augmentation and the grain input pipeline: determinism, shapes, padding, resume."""

import hashlib

import numpy as np
import pytest

from dlsjax.data import augment, builder, dataset, pipeline, synth


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  root = tmp_path_factory.mktemp("pipe")
  synth.synthesize(root / "folder", specimens=30, patients=6, seed=1, size=32)
  builder.build(
    root / "folder", root / "built", builder.BuildOptions(resolution=16, test_patients=2)
  )
  return dataset.load(root / "built")


def digest(x) -> str:
  return hashlib.sha1(np.ascontiguousarray(x).tobytes()).hexdigest()


def test_search_halves():
  w, a = pipeline.search_halves(11, seed=3)
  assert len(w) == 5 and len(a) == 6
  assert sorted(np.concatenate([w, a]).tolist()) == list(range(11))
  w2, a2 = pipeline.search_halves(11, seed=3)
  np.testing.assert_array_equal(w, w2)
  assert not np.array_equal(pipeline.search_halves(11, seed=4)[0], w)


def test_crop_flip_is_shared_across_modalities():
  rng = np.random.default_rng(0)
  wl = rng.random((16, 16, 3)).astype(np.float32)
  images = {"WL": wl, "NIR1": wl[..., :1].copy()}
  seen_shift = False
  for seed in range(20):
    out = augment.random_crop_flip(images, np.random.default_rng(seed), padding=4)
    assert out["WL"].shape == (16, 16, 3) and out["NIR1"].shape == (16, 16, 1)
    np.testing.assert_array_equal(out["WL"][..., :1], out["NIR1"])
    seen_shift |= bool((out["WL"] == 0).all(axis=-1).any())  # zero padding came in
  assert seen_shift
  same = augment.random_crop_flip(images, rng, padding=0, hflip=False, vflip=False)
  np.testing.assert_array_equal(same["WL"], wl)
  # Each flip fires in some draws and not in others, and nothing else happens to the image.
  views = {"none": wl, "h": wl[:, ::-1], "v": wl[::-1], "hv": wl[::-1, ::-1]}
  for hflip, vflip, want in ((True, False, {"none", "h"}), (False, True, {"none", "v"}),
                             (True, True, set(views))):  # fmt: skip
    seen = set()
    for seed in range(40):
      out = augment.random_crop_flip(
        {"x": wl}, np.random.default_rng(seed), padding=0, hflip=hflip, vflip=vflip
      )["x"]
      seen |= {name for name, view in views.items() if np.array_equal(out, view)}
    assert seen == want, (hflip, vflip, seen)


def test_crop_is_a_window_of_the_zero_padded_image():
  x = np.random.default_rng(0).random((10, 12, 2)).astype(np.float32)
  for seed in range(40):
    dy, dx = np.random.default_rng(seed).integers(0, 2 * 3 + 1, size=2)
    want = np.pad(x, ((3, 3), (3, 3), (0, 0)))[dy : dy + 10, dx : dx + 12]
    got = augment.random_crop_flip(
      {"a": x}, np.random.default_rng(seed), padding=3, hflip=False, vflip=False
    )["a"]
    np.testing.assert_array_equal(got, want)


def test_cutmix_mixes_targets_by_pasted_area():
  b, h, w, k = 6, 16, 16, 4
  values = np.arange(b, dtype=np.float32)
  images = {
    "WL": np.broadcast_to(values[:, None, None, None], (b, h, w, 3)).copy(),
    "NIR1": np.broadcast_to(values[:, None, None, None], (b, h, w, 1)).copy(),
  }
  labels = np.arange(b) % k
  targets = np.eye(k, dtype=np.float32)[labels]
  mixed_any = False
  for seed in range(10):
    out, t = augment.cutmix(images, targets, np.random.default_rng(seed), beta=1.0)
    np.testing.assert_allclose(t.sum(-1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(out["WL"][..., :1], out["NIR1"])  # same box everywhere
    for i in range(b):
      own = np.mean(out["WL"][i, ..., 0] == values[i])
      if own < 1.0:
        mixed_any = True
        partner = int(out["WL"][i][out["WL"][i, ..., 0] != values[i]][0, 0])
        want = own * targets[i] + (1 - own) * targets[partner]
        np.testing.assert_allclose(t[i], want, atol=1e-6)
  assert mixed_any
  same, t0 = augment.cutmix(images, targets, np.random.default_rng(0), beta=1.0, prob=0.0)
  assert same is images and t0 is targets


def test_train_batches_shapes_determinism_and_resume(built):
  src = built.source("train")
  w, _ = pipeline.search_halves(len(src), seed=0)
  kw = dict(batch_size=4, seed=7, aug=pipeline.Augment(crop_padding=2, cutmix_beta=1.0))
  ep0 = pipeline.train_batches(built, src, w, epoch=0, **kw)
  assert len(ep0) == len(w) // 4
  b = ep0[0]
  assert b["images"]["NIR2"].shape == (4, 16, 16, 3) and b["label"].shape == (4,)
  assert b["target"].shape == (4, 4) and b["mask"].all()
  again = pipeline.train_batches(built, src, w, epoch=0, **kw)
  for i in range(len(ep0)):
    for m in built.modalities:
      np.testing.assert_array_equal(ep0[i]["images"][m], again[i]["images"][m])
  ep1 = pipeline.train_batches(built, src, w, epoch=1, **kw)
  assert digest(ep1[0]["images"]["WL"]) != digest(ep0[0]["images"]["WL"])
  assert len(ep0) >= 2
  resumed = next(pipeline.iterate(ep0, start=1))
  np.testing.assert_array_equal(resumed["images"]["WL"], ep0[1]["images"]["WL"])
  np.testing.assert_array_equal(resumed["target"], ep0[1]["target"])
  streamed = list(pipeline.iterate(ep0))
  assert len(streamed) == len(ep0)
  np.testing.assert_array_equal(streamed[-1]["label"], ep0[len(ep0) - 1]["label"])


def test_hosts_read_their_rows_of_the_one_host_batches(built):
  """2 hosts: host i's batch k is rows [2i, 2i+2) of the one-host batch k, augmentation included."""
  src = built.source("train")
  kw = dict(batch_size=4, seed=3, epoch=1, aug=pipeline.Augment(crop_padding=2))
  whole = pipeline.train_batches(built, src, **kw)
  hosts = [pipeline.train_batches(built, src, host=(i, 2), **kw) for i in range(2)]
  assert len(hosts[0]) == len(hosts[1]) == len(whole)
  for k in range(len(whole)):
    for i, part in enumerate(hosts):
      rows = slice(2 * i, 2 * i + 2)
      np.testing.assert_array_equal(part[k]["label"], whole[k]["label"][rows])
      for m in built.modalities:
        np.testing.assert_array_equal(part[k]["images"][m], whole[k]["images"][m][rows])
  with pytest.raises(ValueError, match="batch of 4 does not split over 3 hosts"):
    pipeline.train_batches(built, src, host=(0, 3), **kw)


def test_epoch_visits_each_example_at_most_once(built):
  src = built.source("train")
  plain = pipeline.Augment(crop_padding=0, hflip=False, vflip=False)
  ep = pipeline.train_batches(built, src, batch_size=4, seed=0, epoch=3, aug=plain)
  source_digests = {digest(built.decode(src[i])["images"]["NIR1"]) for i in range(len(src))}
  seen = [digest(x) for i in range(len(ep)) for x in ep[i]["images"]["NIR1"]]
  assert len(seen) == len(set(seen)) == (len(src) // 4) * 4
  assert set(seen) <= source_digests


def test_eval_batches_pad_and_mask(built):
  src = built.source("test")
  n = len(src)
  ev = pipeline.eval_batches(built, src, batch_size=4)
  assert len(ev) == -(-n // 4)
  masks = np.concatenate([ev[i]["mask"].reshape(-1) for i in range(len(ev))])
  assert masks.sum() == n and masks[:n].all() and not masks[n:].any()
  labels = np.concatenate([ev[i]["label"].reshape(-1) for i in range(len(ev))])[:n]
  np.testing.assert_array_equal(labels, [built.decode(src[i])["label"] for i in range(n)])
  last = ev[len(ev) - 1]["images"]["WL"].reshape(-1, 16, 16, 3)
  assert (last[masks[-4:] == 0] == 0).all()


def test_worker_processes_give_the_same_batches(built):
  src = built.source("train")
  ep = pipeline.train_batches(built, src, batch_size=4, seed=1, epoch=0)
  local = list(pipeline.iterate(ep))
  remote = list(pipeline.iterate(ep, workers=1))
  assert len(local) == len(remote) == len(ep)
  for a, b in zip(local, remote, strict=True):
    for m in built.modalities:
      np.testing.assert_array_equal(a["images"][m], b["images"][m])
    np.testing.assert_array_equal(a["target"], b["target"])
