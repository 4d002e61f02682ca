"""Cloud paths offline: epath's fsspec backend with an in-memory filesystem serving ``gs://``.

epath sends ``gs://`` to fsspec's ``gcs`` protocol (gcsfs); here that protocol
is fsspec's memory filesystem, so every byte goes through the same epath calls
as on a bucket, without a network.
"""

import logging
import pathlib
import re

import numpy as np
import pytest
from conftest import BREAST_SUBSET as BREAST
from etils import epath
from fsspec.implementations.memory import MemoryFileSystem
from search_test import TINY

from dlsjax import main, paths
from dlsjax.data import builder, npz


class FakeGCS(MemoryFileSystem):
  protocol = ("gs", "gcs")

  def __init__(self, *args, finalize_on_close=None, **kwargs):  # epath passes gcsfs's option
    super().__init__(*args, **kwargs)


@pytest.fixture
def serve_gs(monkeypatch):
  """``serve_gs(cls)``: ``gs://`` (fsspec protocols gs and gcs) served by ``cls`` for one test."""
  import sys

  from etils.epath import backend

  registry = sys.modules["fsspec.registry"]._registry

  def serve(cls):
    for p in ("gs", "gcs"):
      monkeypatch.setitem(registry, p, cls)
    backend._FileSystemSpecBackend._get_filesystem.cache_clear()  # epath caches the filesystem
    cls.clear_instance_cache()

  yield serve
  backend._FileSystemSpecBackend._get_filesystem.cache_clear()


@pytest.fixture
def gcs(monkeypatch, tmp_path, serve_gs):
  monkeypatch.setenv("DLSJAX_STAGING_DIR", str(tmp_path / "staging"))
  monkeypatch.setattr(FakeGCS, "store", {})
  monkeypatch.setattr(FakeGCS, "pseudo_dirs", [""])
  serve_gs(FakeGCS)


def upload(local: pathlib.Path, uri: str) -> None:
  for p in local.rglob("*"):
    if p.is_file():
      target = epath.Path(uri) / str(p.relative_to(local))
      target.parent.mkdir(parents=True, exist_ok=True)
      target.write_bytes(p.read_bytes())


def test_staged_dir_mirrors_pushes_changes_and_skips_unfinished_checkpoints(gcs, tmp_path):
  local = paths.StagedDir(tmp_path / "plain")
  assert local.local == tmp_path / "plain" and local.remote is None
  local.push()  # nothing to do

  run = paths.StagedDir("gs://bucket/run")
  assert run.local.is_dir() and not list(run.local.iterdir())
  (run.local / "metrics.jsonl").write_text('{"epoch": 1}\n')
  step = run.local / "checkpoints" / "2"
  step.mkdir(parents=True)
  (step / "state").write_bytes(b"x" * 10)
  (step / "_CHECKPOINT_METADATA").write_text("{}")
  run.push()
  remote = epath.Path("gs://bucket/run")
  assert (remote / "metrics.jsonl").read_text() == '{"epoch": 1}\n'
  assert (remote / "checkpoints/2/state").read_bytes() == b"x" * 10
  # Markers go last, so an upload cut short leaves a step without its marker.
  order = [p.name for p in paths._upload_order(run.local)]
  assert order[-1] == "_CHECKPOINT_METADATA"

  # A deleted local file (orbax's max_to_keep) is deleted remotely at the next push.
  (run.local / "metrics.jsonl").unlink()
  run.push()
  assert not (remote / "metrics.jsonl").exists()
  # Only process 0 uploads.
  (run.local / "late.txt").write_text("x")
  paths.StagedDir.push(_other_process(run))
  assert not (remote / "late.txt").exists()

  # A half-uploaded checkpoint (no marker) is skipped by the next download.
  (remote / "checkpoints/4").mkdir(parents=True)
  (remote / "checkpoints/4/state").write_bytes(b"y")
  again = paths.StagedDir("gs://bucket/run")
  assert (again.local / "checkpoints/2/state").read_bytes() == b"x" * 10
  assert not (again.local / "checkpoints/4").exists()


def _other_process(run: paths.StagedDir) -> paths.StagedDir:
  run.primary = False
  return run


def test_remote_inputs_download_once_and_missing_ones_are_named(gcs, tmp_path):
  (tmp_path / "g.json").write_text("{}")
  upload(tmp_path, "gs://bucket/in")
  got = paths.local("gs://bucket/in/g.json", "--genotype")
  assert got.read_text() == "{}" and paths.local("gs://bucket/in/g.json", "--genotype") == got
  with pytest.raises(paths.PathError, match=r"--genotype gs://bucket/nothing: no such file"):
    paths.local("gs://bucket/nothing", "--genotype")
  assert paths.local(tmp_path / "g.json", "--genotype") == tmp_path / "g.json"


def test_a_storage_backend_that_fails_is_named_with_the_flag(monkeypatch, tmp_path, serve_gs):
  """What gs:// without gcsfs or credentials gives: an error naming the flag and the fix."""

  class NoAccess(MemoryFileSystem):
    protocol = ("gs", "gcs")

    def __init__(self, *args, **kwargs):
      raise ImportError("Please install gcsfs to access Google Storage")

  monkeypatch.setenv("DLSJAX_STAGING_DIR", str(tmp_path / "staging"))
  serve_gs(NoAccess)
  with pytest.raises(SystemExit, match=r"--workdir gs://b/run: cannot be read.*gcsfs.*credentials"):
    main.main(["evaluate", "--workdir", "gs://b/run"])
  with pytest.raises(SystemExit, match=r"--data-dir gs://b/data: cannot be read"):
    main.main(["data", "info", "--data-dir", "gs://b/data"])
  assert not (tmp_path / "staging" / "inputs").exists() or not list(
    (tmp_path / "staging" / "inputs").iterdir()
  )


def test_search_with_a_bucket_for_data_and_workdir_resumes_from_the_bucket(gcs, tmp_path, caplog):
  # `data build` into the bucket: published whole (no .partial left).
  npz.from_npz(BREAST, tmp_path / "folder", modality="US")
  upload(tmp_path / "folder", "gs://bucket/folder")
  main.main(["data", "build", "--manual-dir", "gs://bucket/folder", "--data-dir",
             "gs://bucket/built", "--config", "paper", "--config.model.resolution=8"])  # fmt: skip
  assert (epath.Path("gs://bucket/built") / builder.METADATA).exists()
  assert not epath.Path("gs://bucket/built.partial").exists()
  with pytest.raises(SystemExit, match="exists"):
    main.main(["data", "build", "--manual-dir", "gs://bucket/folder", "--data-dir",
               "gs://bucket/built", "--config", "paper"])  # fmt: skip

  sets = [f"--config.{s}" for s in TINY]
  cmd = ["search", "--config", "paper", "--data-dir", "gs://bucket/built",
         "--workdir", "gs://bucket/run", *sets]  # fmt: skip
  main.main([*cmd, "--stop-after", "3"])  # checkpoint at step 2 (every 2 steps), uploaded
  remote = epath.Path("gs://bucket/run")
  steps = sorted(int(p.name) for p in (remote / "checkpoints").iterdir() if p.name.isdigit())
  assert steps == [2]
  assert (remote / "config.json").exists() and not (remote / "alphas.npz").exists()
  with pytest.raises(SystemExit, match="pass --resume"):  # the bucket's checkpoints protect it
    main.main(cmd)
  caplog.set_level(logging.INFO)
  main.main([*cmd, "--resume"])  # a fresh local mirror, filled from the bucket
  assert re.search(r"resuming at epoch 1, batch 2 \(step 2\)", caplog.text)
  assert re.search(r"ran 8 steps in this call \(from step 2\)", caplog.text)
  a = np.load(paths.local("gs://bucket/run/alphas.npz", "--workdir"))
  assert set(a.files) == {"normal", "reduce"}
  assert (remote / "genotype_argmax.json").exists() and (remote / "alphas.png").exists()
