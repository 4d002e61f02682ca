"""Paths the command line takes, on local disk or in cloud storage (``gs://`` and others).

Every path goes through ``etils.epath`` (what TFDS and orbax use), so any scheme
epath supports works: ``gs://`` with ``gcsfs`` (``pip install 'dlsjax[gcs]'``) and
Google credentials, ``s3://`` with ``s3fs``, and so on.

Cloud storage has no appends or atomic renames, and matplotlib, TensorBoard and
the array-record reader want local files, so remote folders are used through
local copies under ``DLSJAX_STAGING_DIR`` (default ``~/.cache/dlsjax/staging``):

* inputs (``--data-dir``, ``--manual-dir``, ``--genotype``, ``--pretrained``) are
  downloaded once into the staging folder (a download is complete or absent);
* a remote ``--workdir`` is a :class:`StagedDir`: the run works in a local
  mirror, and process 0 uploads what changed after every checkpoint and at the
  end (checkpoint folders marker-last, so a remote checkpoint without its
  marker is an unfinished upload and is ignored); ``--resume`` first downloads
  the remote folder;
* ``data build`` into a bucket uploads to ``NAME.partial`` and renames at the end.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pathlib
import shutil
import uuid

from etils import epath

log = logging.getLogger(__name__)

# Files orbax writes last into a checkpoint step: uploaded last, required on download.
CHECKPOINT_MARKERS = ("commit_success.txt", "_CHECKPOINT_METADATA")


class PathError(RuntimeError):
  """A path that cannot be used (the message names the flag)."""


def is_remote(path) -> bool:
  return "://" in str(path)


def resolve(path) -> epath.Path:
  """``path`` as an ``epath.Path`` (local paths made absolute)."""
  if is_remote(path):
    return epath.Path(str(path))
  return epath.Path(os.path.abspath(os.fspath(path)))


def staging_root() -> pathlib.Path:
  root = os.environ.get("DLSJAX_STAGING_DIR") or str(
    pathlib.Path.home() / ".cache" / "dlsjax" / "staging"
  )
  return pathlib.Path(root)


def _slot(uri: str, kind: str) -> pathlib.Path:
  digest = hashlib.sha1(uri.encode()).hexdigest()[:12]
  name = uri.rstrip("/").rsplit("/", 1)[-1] or "root"
  return staging_root() / kind / f"{name}-{digest}"


def _access(flag: str, uri, action: str, fn):
  """Run ``fn()``; an error of the storage layer becomes one naming ``flag`` and what to do."""
  try:
    return fn()
  except (FileNotFoundError, FileExistsError, PathError):
    raise
  except Exception as e:  # ImportError (no gcsfs), auth and network errors of the backends
    hint = ""
    if str(uri).startswith(("gs://", "gcs://")):
      hint = (
        " gs:// needs gcsfs (pip install 'dlsjax[gcs]') and Google credentials "
        "(gcloud auth application-default login, or the VM's service account)."
      )
    raise PathError(
      f"{flag} {uri}: cannot {action} ({type(e).__name__}: {str(e)[:300]}).{hint}"
    ) from None


def local(path, flag: str) -> pathlib.Path:
  """A local path for ``path``: itself, or a complete download of a remote file or folder."""
  if not is_remote(path):
    return pathlib.Path(path)
  uri = str(path)
  dest = _slot(uri, "inputs")
  if dest.exists():
    return dest
  src = epath.Path(uri)
  if not _access(flag, uri, "be read", src.exists):
    raise PathError(f"{flag} {uri}: no such file or folder")
  tmp = dest.with_name(f"{dest.name}.partial-{uuid.uuid4().hex[:8]}")
  log.info("%s %s: downloading to %s", flag, uri, dest)
  _access(flag, uri, "be read", lambda: _download(src, tmp))
  try:
    os.replace(tmp, dest)
  except OSError:  # another process on this host finished the same download first
    if not dest.exists():
      raise
    shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
  return dest


def _download(src: epath.Path, dest: pathlib.Path) -> None:
  dest.parent.mkdir(parents=True, exist_ok=True)
  if not src.is_dir():
    dest.write_bytes(src.read_bytes())
    return
  dest.mkdir(parents=True, exist_ok=True)
  for child in src.iterdir():
    if _is_unfinished_checkpoint(child):
      log.warning("%s: an unfinished checkpoint upload, skipped", child)
      continue
    _download(child, dest / child.name)


def _is_unfinished_checkpoint(path: epath.Path) -> bool:
  return (
    path.name.isdigit()
    and path.parent.name == "checkpoints"
    and path.is_dir()
    and not any((path / m).exists() for m in CHECKPOINT_MARKERS)
  )


def _upload_order(root: pathlib.Path) -> list[pathlib.Path]:
  """Files under ``root``; in each folder, orbax's commit markers come last."""
  files = sorted(p for p in root.rglob("*") if p.is_file())
  return sorted(files, key=lambda p: (p.name in CHECKPOINT_MARKERS, str(p)))


class StagedDir:
  """A run folder that is local, or a local mirror of a remote one (see the module docstring).

  ``local`` is where the run writes; ``push()`` uploads what changed since the
  last push and removes remote files deleted locally (old checkpoints); it does
  nothing for a local folder or on processes other than 0.
  """

  def __init__(
    self, path, flag: str = "--workdir", *, pull: bool = True, primary: bool = True,
    process: int = 0,
  ):  # fmt: skip
    self.uri, self.flag, self.primary = str(path), flag, primary
    self.remote = epath.Path(self.uri) if is_remote(path) else None
    self._pushed: dict[str, tuple[int, int]] = {}
    if self.remote is None:
      self.local = pathlib.Path(path)
      return
    # One mirror per process: processes of one job may share a host (and its staging folder).
    slot = _slot(self.uri, "workdirs")
    self.local = slot.with_name(f"{slot.name}-p{process}") if process else slot
    if self.local.exists():
      shutil.rmtree(self.local)  # the remote folder is the truth; a stale mirror is not
    self.local.mkdir(parents=True)
    if pull and _access(flag, self.uri, "be read", self.remote.exists):
      log.info("%s %s: downloading to %s", flag, self.uri, self.local)
      _access(flag, self.uri, "be read", lambda: self._pull())

  def _pull(self) -> None:
    for child in self.remote.iterdir():
      _download(child, self.local / child.name)
    for p in self.local.rglob("*"):
      if p.is_file():
        self._pushed[str(p.relative_to(self.local))] = _signature(p)

  def push(self) -> None:
    if self.remote is None or not self.primary:
      return
    _access(self.flag, self.uri, "be written", self._push)

  def _push(self) -> None:
    now = {}
    for p in _upload_order(self.local):
      rel = str(p.relative_to(self.local))
      now[rel] = sig = _signature(p)
      if self._pushed.get(rel) != sig:
        _put(p, self.remote / rel)
    for rel in set(self._pushed) - set(now):
      target = self.remote / rel
      if target.exists():
        target.unlink()
    self._pushed = now


def _put(file: pathlib.Path, target: epath.Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  target.write_bytes(file.read_bytes())


def _signature(p: pathlib.Path) -> tuple[int, int]:
  st = p.stat()
  return st.st_size, st.st_mtime_ns


def publish_tree(local_dir: pathlib.Path, path, flag: str) -> None:
  """Upload a finished local folder to ``path``: to ``path.partial`` first, renamed at the end."""
  dest = epath.Path(str(path))
  partial = epath.Path(str(path).rstrip("/") + ".partial")

  def upload():
    if partial.exists():
      partial.rmtree()
    for p in _upload_order(local_dir):
      _put(p, partial / str(p.relative_to(local_dir)))
    if dest.exists():
      dest.rmtree()
    partial.rename(dest)

  _access(flag, path, "be written", upload)
