"""Test setup: fake CPU devices before JAX is imported, compilation cache, tiny specs."""

import os

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import dataclasses
from pathlib import Path

import pytest

from dlsjax import runtime


def pytest_collection_modifyitems(items):
  """Heavy tests first: started last, one of them would run on alone after the rest."""
  items.sort(key=lambda item: item.get_closest_marker("heavy") is None)  # stable


# Subprocesses started by tests (CLI runs) share the cache through the environment.
os.environ["DLSJAX_CACHE_DIR"] = os.environ.get("DLSJAX_CACHE_DIR") or str(
  Path(__file__).resolve().parents[1] / ".cache" / "jax"
)
runtime.setup(os.environ["DLSJAX_CACHE_DIR"])

from dlsjax.netspec import Modality, NetworkSpec, dls_cells

# A small but complete op mix: zero, pooling, identity/factorized reduce,
# separable, dilated and normal convs (compiles in seconds on 2 CPU cores).
TINY_OPS = (
  "none",
  "max_pool_3x3",
  "avg_pool_3x3",
  "skip_connect",
  "sep_conv_3x3",
  "dil_conv_3x3",
  "nor_conv_3x3",
)

PAPER_MODALITIES = (Modality("WL", 3, False), Modality("NIR1", 3, True), Modality("NIR2", 3, True))


def tiny_spec(**kw) -> NetworkSpec:
  base = dict(
    modalities=PAPER_MODALITIES,
    num_classes=4,
    c_sin=4,
    cells=dls_cells(1, 1),
    cell_channels=2,
    op_set=TINY_OPS,
    resolution=8,
  )
  base.update(kw)
  return NetworkSpec(**base)


def cells_only_spec() -> NetworkSpec:
  """One modality, no learnable stems, 3 ops: compiles fastest; for tests of the machinery."""
  return tiny_spec(
    op_set=("none", "skip_connect", "sep_conv_3x3"),
    modalities=(Modality("WL", 3, False),),
    stems={"fusing": "identity", "fl": "off"},
  )


@pytest.fixture
def spec():
  return tiny_spec()


def one_cell_spec() -> NetworkSpec:
  """:func:`cells_only_spec` with a single normal cell: half its step's compile time.

  For tests of the update rule and the device mapping, which do not depend on
  the cell layout (the layout has its own tests).
  """
  return dataclasses.replace(cells_only_spec(), cells=("normal",))


def cli(*args):
  """``python -m dlsjax.main ARGS`` in a subprocess; asserts it exits 0."""
  import subprocess
  import sys

  out = subprocess.run(
    [sys.executable, "-m", "dlsjax.main", *args], capture_output=True, text=True, timeout=900
  )
  assert out.returncode == 0, out.stderr[-3000:]
  return out


BREAST_SUBSET = Path(__file__).parent / "data" / "breastmnist_subset.npz"


# A cells-only network on one modality (the BreastMNIST subset at 8 x 8) with every stage
# (search, derivation, training) at its smallest: for in-process pipeline tests.
TINY_PIPELINE = [
  "model.modalities=[{'name': 'US', 'channels': 3, 'fluorescence': False}]",
  "model.num_classes=2",
  "model.fusing_stem=identity",
  "model.fl_stem=off",
  "model.c_sin_search=4",
  "model.c_sin_train=4",
  "model.cell_channels_divisor=2",
  "model.k_r=1",
  "model.resolution=8",
  "model.op_set=none,skip_connect,sep_conv_3x3",
  "search.batch_size=4",
  "search.epochs=1",
  "search.crop_padding=2",
  "derive.batch_size=4",
  "derive.max_images=8",
  "train.epochs=1",
  "train.batch_size=8",
  "train.crop_padding=2",
]


def built_breast_subset(root: Path, resolution: int = 8) -> Path:
  """The BreastMNIST test subset (40/10/20 images) as a built dataset under ``root``."""
  from dlsjax.data import builder, npz

  npz.from_npz(BREAST_SUBSET, root / "folder", modality="US")
  builder.build(root / "folder", root / "built", builder.BuildOptions(resolution=resolution))
  return root / "built"
