"""TensorBoard scalars of a search or training run (``RUN/tb``)."""

from __future__ import annotations

import logging
import pathlib

log = logging.getLogger(__name__)


def writer(run_dir: pathlib.Path):
  """A ``SummaryWriter`` on ``run_dir/tb``, or None where tensorboardX is missing."""
  try:
    from tensorboardX import SummaryWriter
  except ImportError:  # optional at run time; a dependency of the package
    log.warning("tensorboardX not installed: no TensorBoard scalars")
    return None
  return SummaryWriter(str(run_dir / "tb"))
