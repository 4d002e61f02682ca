"""Model defaults shared by the search and training configs (paper, Section III-B)."""

from __future__ import annotations

import dataclasses

import ml_collections

PAPER_MODALITIES = (
  {"name": "WL", "channels": 3, "fluorescence": False},
  {"name": "NIR1", "channels": 3, "fluorescence": True},
  {"name": "NIR2", "channels": 3, "fluorescence": True},
)
PAPER_CLASSES = ("I", "II", "III", "IV")


def paper_model() -> ml_collections.ConfigDict:
  """DLS-DARTS macro structure: every value is the paper's (Section III-B)."""
  from dlsjax import baselines

  m = ml_collections.ConfigDict()
  # dls_darts | mmnas | resnet18 | efficientnet_b0 | pyramidnet_shakedrop (dlsjax/models.py)
  m.arch = "dls_darts"
  m.layout = "dls"  # reduction-first groups: K_r x (reduction + K normal cells); mmnas
  m.modalities = [dict(d) for d in PAPER_MODALITIES]  # each mode has 3 channels
  m.num_classes = len(PAPER_CLASSES)
  m.c_sin_search = 48  # C_sin during search
  m.c_sin_train = 144  # C_sin during training
  m.c_sout = None  # None = 2 * C_sin
  m.k_r = 3  # groups (one reduction cell each)
  m.k_search = 1  # normal cells per group in search
  m.k_train = 1  # normal cells per group in training
  m.stem_inner_nodes = 2  # N_s
  m.cell_inner_nodes = 3  # N = 6: 2 inputs, 3 inner, 1 output
  m.op_set = "paper10"  # a named set (darts8 | paper9 | paper10) or "name,name,..."
  m.fusing_stem = "learnable"  # learnable | concat (ablation) | identity
  m.fl_stem = "learnable"  # learnable | concat (ablation) | off
  m.fl_stem_cells = 2  # the FL Stem output feeds s0 of the first two cells
  # Not stated in the paper: the node channel count C of the cells before the
  # first reduction, as C_sin // divisor (each reduction cell doubles it).
  # With 4 the training network has C = 36 (DARTS' evaluation width) and its
  # derived networks land near the paper's 5.11 M parameters (argmax genotypes
  # of random alphas: 4.9-18 M; with 2: 17-65 M; see benchmarks/RESULTS.md).
  m.cell_channels_divisor = 4
  m.resolution = 64
  m.depthwise_impl = "auto"  # auto (CPU: toeplitz, else xla) | xla | toeplitz
  # Recompute each source node's operations in the backward pass instead of
  # keeping their intermediates (jax.checkpoint of the supernet's scan body):
  # same values, 1/3 of the memory and faster on a CPU (benchmarks/RESULTS.md).
  # auto (on CPU only: not measured on GPUs) | on | off.
  m.dag_remat = "auto"
  # Layout of the supernet's node tensors: auto (CPU: channel-major CNHW when
  # every op supports it) | NHWC | CNHW. Same values; see netspec.py.
  m.dag_layout = "auto"
  # How the supernet's DAGs are scanned: auto (CPU: edge) | source | edge.
  # Same values; "edge" evaluates only real edges (netspec.py, RESULTS.md).
  m.dag_schedule = "auto"
  # Run consecutive normal cells of the supernet as one scan over the cells:
  # XLA compiles one DAG body per run of normal cells instead of one per cell.
  # Same values; DropPath draws other masks (netspec.py, RESULTS.md).
  m.share_cell_bodies = True
  # Compute dtype: float32 | bfloat16 (parameters, alphas, optimiser states and BN
  # statistics stay float32; dlsjax/precision.py).
  m.dtype = "float32"
  # Only used by layout == "darts".
  m.layers_search = 8
  m.layers_train = 20
  m.darts_c_search = 16
  m.darts_c_train = 36
  m.darts_stem_multiplier = 3
  # The comparison CNNs' hyper-parameters (model.arch = their name; dlsjax/baselines/).
  m.baselines = baselines.default_configs()
  return m


def darts_cifar_model() -> ml_collections.ConfigDict:
  """The original DARTS CIFAR-10 search space / NetworkCIFAR (REFERENCE.md)."""
  m = paper_model()
  m.layout = "darts"
  m.modalities = [{"name": "image", "channels": 3, "fluorescence": False}]
  m.num_classes = 10
  m.op_set = "darts8"
  m.fusing_stem = "identity"  # the manual 3x3 stem to 3C feeds both inputs of cell 0
  m.fl_stem = "off"
  m.cell_inner_nodes = 4
  m.cell_channels_divisor = 0  # unused: C comes from darts_c_*
  m.resolution = 32
  return m


def job_config(model, classes, seed: int) -> ml_collections.ConfigDict:
  """What every search or training config starts with: model, classes, data, seed."""
  c = ml_collections.ConfigDict()
  c.model = model
  c.classes = list(classes)
  c.data = data_config()
  c.seed = seed
  return c


def run_options() -> dict:
  """How a search or training job runs (the same fields in ``config.search`` / ``.train``)."""
  return dict(
    parallel="pmap",  # pmap | shard_map (the same per-device step)
    checkpoint_every_steps=0,  # 0: only at the end of every epoch
    distributed="auto",  # jax.distributed.initialize(): auto (from the environment) | on | off
  )


def data_config() -> ml_collections.ConfigDict:
  """Dataset building and loading (paper Section III-A; ``dlsjax data build --config.data.x=``)."""
  d = ml_collections.ConfigDict()
  d.preprocess = "build"  # build: preprocess once into the dataset | on_the_fly: in the loader
  d.gray_channels = 3  # single-channel images duplicated to this many (paper: fluorescence to 3)
  # The paper does not name its non-linear normalisation of raw fluorescence;
  # log (default) or gamma (see dlsjax/preprocess.py).
  d.nonlinear = "log"
  d.gamma = 0.5
  d.saturated = 0.35  # auto-contrast: % of saturated pixels (ImageJ default)
  d.lowpass_fraction = 0.5  # FFT low-pass block: half the height and width (1.0 = off)
  d.test_patients = 5  # patient-level test split when manifest.csv has none (paper: 5 of 24)
  d.split_seed = 0
  d.workers = 0  # grain worker processes (0: read-ahead threads in this process)
  d.threads = 4
  return d


def defaults(cls, *, drop: tuple[str, ...] = ()) -> dict:
  """The field defaults of dataclass ``cls``: where a preset's values are written once (the
  dataclass documents each field), so the config and the code cannot disagree."""
  return {
    f.name: f.default
    for f in dataclasses.fields(cls)
    if f.name not in drop and f.default is not dataclasses.MISSING
  }


def derive_config(batch_size: int) -> ml_collections.ConfigDict:
  """``config.derive``: how ``dlsjax derive`` turns a search into a genotype; the fields and
  their defaults are ``derivation.DeriveOptions``'s (MPDS on accuracy, as the paper)."""
  from dlsjax.derivation.base import DeriveOptions

  return ml_collections.ConfigDict({**defaults(DeriveOptions), "batch_size": batch_size})
