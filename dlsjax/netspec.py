"""Frozen description of a network's macro structure (supernet and derived net).

Built from an ``ml_collections`` config by :func:`spec_from_config`. The same
spec drives the supernet (search) and the derived network (training), so
both share one macro structure; only the DAG of each part differs.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

from dlsjax import ops, parts, precision
from dlsjax.topology import Topology

DAG_LAYOUTS = ("auto", "NHWC", "CNHW")
DAG_SCHEDULES = ("auto", "source", "edge")


def _on_cpu() -> bool:
  """Whether JAX runs on CPU: the backend the ``auto`` DAG options were measured on."""
  import jax

  return jax.default_backend() == "cpu"


@dataclasses.dataclass(frozen=True)
class Modality:
  name: str
  channels: int = 3
  fluorescence: bool = False


@dataclasses.dataclass(frozen=True)
class NetworkSpec:
  """Macro structure of a DLS-DARTS (or DARTS) network.

  Attributes:
    modalities: input images, one manual stem each.
    num_classes: size of the classification head.
    c_sin: output channels of each manual stem (paper: 48 search, 144 train).
    c_sout: output channels of the learnable stems; ``None`` = ``2 * c_sin``.
    stems: the kind of each registered stem (``dlsjax.parts``): ``learnable``,
      ``concat``, ``identity`` or ``off``, as a mapping or ``(name, kind)``
      pairs; a stem not named takes its registered default. The paper's:
      ``fusing`` (the Fusing Stem over all modalities; ``concat`` is the
      ablation "- Fusing Stem", ``identity`` a one-modality network as in
      DARTS) and ``fl`` (the FL Stem over the fluorescence modalities;
      ``concat`` is "- FL Stem"). A stem without input modalities is omitted
      whatever its kind. Stored as ``(name, kind)`` pairs for every
      registered stem, in registry order.
    stem_inner_nodes: N_s (paper: 2).
    cell_inner_nodes: inner nodes per cell (paper: 3; DARTS: 4).
    cells: ``"reduce"``/``"normal"`` per cell, in order.
    cell_channels: node channels before the first cell; every reduction cell
      doubles it (DARTS' ``C``).
    op_set: operation names; position = op index.
    fl_stem_cells: how many of the first cells take the FL Stem output as
      their first input ``s0``. The paper: "the output of Fusing Stem is used
      as the input of the first cell, while the one of FL Stem is used as the
      input of the first two cells". We read this as cell 0 = (FL, Fusing),
      cell 1 = (FL, cell 0), i.e. the FL Stem plays the role DARTS' stem plays
      for ``s0`` of the first two cells (default 2). With 1, cell 1 gets the
      Fusing Stem output as ``s0`` instead.
    resolution: input height = width.
    depthwise_impl: ``auto`` | ``xla`` | ``toeplitz`` (see layers.depthwise_conv).
    scan_unroll: unroll the supernet's scans over source nodes (a larger
      graph; used by ``describe`` because XLA's cost analysis counts a loop
      body once).
    dag_remat: rematerialise the supernet's per-source computation in the
      backward pass (``jax.checkpoint`` of the scan body): only the scan
      carry is kept per source, every operation's intermediates are
      recomputed. Same values. ``True``, ``False`` or ``"auto"`` (on CPU
      only, where it was measured to cut the search step's memory several
      times and run faster; GPU steps were measured without it).
    dag_layout: layout of the supernet's node tensors inside each DAG:
      ``NHWC``, channel-major ``CNHW`` or ``auto`` (``CNHW`` on CPU when
      every op of ``op_set`` supports it, else ``NHWC``). On CPU the
      depthwise convolutions are channel-major matmuls
      (``layers.depthwise_toeplitz``), so NHWC costs two transposes per
      convolution; values are the same either way.
    dag_schedule: how a DAG's inner sources are scanned (``cells._scans``):
      ``source`` (one scan step per source node, every op evaluated for all
      target slots at once, the slots a source cannot reach with zero
      weight: 20 edge evaluations for the 14 edges of a DARTS normal cell),
      ``edge`` (the input sources as in ``source``, then the inner sources'
      edges one per scan step: exactly 14, and no slot axis in their
      operations) or ``auto`` (``edge`` on CPU, where it was measured
      faster; ``source`` elsewhere, as measured on GPUs; benchmarks/RESULTS.md).
      Same values and parameters; one more compiled body per normal
      cell. A derivation (MPDS) keeps ``source``, the form its speed was
      measured in.
    dag_split_inputs: scan the input sources of each learnable stem's DAG
      separately from its inner sources, reading the stem's inputs directly
      (``cells._scans``). Same values and parameters, one more compiled body
      per stem. The derivation sets it: under its ``vmap`` over candidate
      masks the operations on a stem's inputs (which no candidate changes)
      then run once, not once per candidate, and the scan of inner sources
      skips the target slots they cannot reach (a search's single scan
      evaluates them with zero weight; their BN statistics, which no output
      reads, are then left as they were). Not a config option; a search
      leaves it off.
    share_cell_bodies: run each stretch of two or more consecutive normal
      cells of the supernet as one ``lax.scan`` over the cells
      (``Network._shared_run``), so XLA compiles one DAG body per stretch
      instead of one per cell (the canonical DARTS layout: 5 cell bodies
      instead of 8). Same values, parameters and statistics; DropPath draws
      its masks from other keys; a little more arithmetic (per stretch, one
      1x1 preprocessing past its end whose result is dropped, three for a
      stretch of three or more cells). The derived network is unaffected.
      Config ``model.share_cell_bodies``.
    dtype: compute dtype, ``float32`` or ``bfloat16`` (``dlsjax.precision``):
      parameters, alphas, optimiser states and BatchNorm statistics stay
      float32 either way. Config ``model.dtype``.
  """

  modalities: tuple[Modality, ...]
  num_classes: int
  c_sin: int
  cells: tuple[str, ...]
  cell_channels: int
  op_set: tuple[str, ...] = ops.PAPER10
  c_sout: int | None = None
  stems: Mapping[str, str] | tuple[tuple[str, str], ...] = ()
  stem_inner_nodes: int = 2
  cell_inner_nodes: int = 3
  fl_stem_cells: int = 2
  resolution: int = 64
  depthwise_impl: str = "auto"
  scan_unroll: bool = False
  dag_remat: bool | str = "auto"
  dag_layout: str = "auto"
  dag_schedule: str = "auto"
  dag_split_inputs: bool = False
  share_cell_bodies: bool = True
  dtype: str = "float32"

  def __post_init__(self):
    if not self.modalities:
      raise ValueError("NetworkSpec.modalities is empty")
    precision.compute_dtype(self.dtype)  # a clear error for an unknown name
    names = [m.name for m in self.modalities]
    if len(set(names)) != len(names):
      raise ValueError(f"NetworkSpec.modalities has duplicate names: {names}")
    object.__setattr__(self, "stems", self._resolve_stems(self.stems))
    kinds = [k.name for k in parts.cell_kinds()]
    bad = [c for c in self.cells if c not in kinds]
    if bad or not self.cells:
      raise ValueError(
        f"NetworkSpec.cells must be a non-empty list of registered cell kinds {kinds}, "
        f"got {self.cells}"
      )
    n_red = sum(parts.get_cell_kind(c).reduction for c in self.cells)
    if self.resolution % (2**n_red):
      raise ValueError(
        f"model.resolution {self.resolution} is not divisible by 2^{n_red} (one halving per "
        "reduction cell; the factorized reduce of an odd size has no exact half): choose a "
        "resolution or model.k_r that fits"
      )
    object.__setattr__(self, "op_set", ops.resolve_op_set(self.op_set))
    if self.dag_remat not in (True, False, "auto"):
      raise ValueError(
        f"NetworkSpec.dag_remat must be true, false or 'auto', got {self.dag_remat!r}"
      )
    if self.dag_layout not in DAG_LAYOUTS:
      raise ValueError(
        f"NetworkSpec.dag_layout must be one of {DAG_LAYOUTS}, got {self.dag_layout!r}"
      )
    if self.dag_schedule not in DAG_SCHEDULES:
      raise ValueError(
        f"NetworkSpec.dag_schedule must be one of {DAG_SCHEDULES}, got {self.dag_schedule!r}"
      )
    if self.dag_layout == "CNHW":
      plain = [n for n in self.op_set if not ops.get_op(n).channel_major]
      if plain:
        raise ValueError(
          f"model.dag_layout='CNHW' needs channel-major ops; {plain} are registered "
          "without channel_major=True (use 'auto' or 'NHWC')"
        )

  def _resolve_stems(self, given) -> tuple[tuple[str, str], ...]:
    given = dict(given.items() if isinstance(given, Mapping) else given)
    known = [s.name for s in parts.stems()]
    unknown = sorted(set(given) - set(known))
    if unknown:
      raise ValueError(f"NetworkSpec.stems names unregistered stems {unknown}; registered: {known}")
    out = []
    for stem in parts.stems():
      kind = given.get(stem.name, stem.default)
      if kind not in parts.STEM_KINDS:
        raise ValueError(
          f"model.{stem.config_field} must be one of {parts.STEM_KINDS}, got {kind!r}"
        )
      n_in = len(self._inputs_of(stem))
      if kind == "identity" and n_in > 1:
        raise ValueError(
          f"model.{stem.config_field}='identity' needs exactly one input modality, it has {n_in}"
        )
      out.append((stem.name, kind))
    active = [n for n, k in out if k != "off" and self._inputs_of(parts.get_stem(n))]
    if not any(parts.get_stem(n).feeds == "s1" for n in active):
      raise ValueError(
        "no stem feeds the cells: every stem with feeds='s1' is off or has no input modality "
        f"(stems {dict(out)}, modalities {[m.name for m in self.modalities]})"
      )
    return tuple(out)

  def _inputs_of(self, stem: parts.StemDef) -> tuple[Modality, ...]:
    return tuple(m for m in self.modalities if stem.inputs(m))

  def stem_kind(self, name: str) -> str:
    """The kind of stem ``name`` (``off`` when it has no input modality)."""
    kind = dict(self.stems)[name]
    return kind if self._inputs_of(parts.get_stem(name)) else "off"

  def stem_inputs(self, name: str) -> tuple[Modality, ...]:
    """The modalities stem ``name`` reads, in the order of ``modalities``."""
    return self._inputs_of(parts.get_stem(name))

  def active_stems(self) -> tuple[parts.StemDef, ...]:
    """The stems this network has (not off, with inputs), in registry order."""
    return tuple(s for s in parts.stems() if self.stem_kind(s.name) != "off")

  def stem_channels(self, name: str) -> int:
    """Output channels of stem ``name``: ``c_sin`` for ``identity``, else ``c_sout``."""
    if self.stem_kind(name) == "identity":
      return self.c_sin
    return self.c_sout if self.c_sout is not None else 2 * self.c_sin

  def resolved_dag_schedule(self) -> str:
    """The scan schedule of the supernet's DAGs (see ``dag_schedule``)."""
    if self.dag_schedule != "auto":
      return self.dag_schedule
    return "edge" if _on_cpu() else "source"

  def resolved_dag_remat(self) -> bool:
    """Whether the supernet's scan bodies are rematerialised (see ``dag_remat``)."""
    if self.dag_remat == "auto":
      return _on_cpu()
    return bool(self.dag_remat)

  def resolved_dag_layout(self) -> str:
    """The layout the supernet's DAGs run in (see ``dag_layout``)."""
    if self.dag_layout != "auto":
      return self.dag_layout
    if _on_cpu() and all(ops.get_op(n).channel_major for n in self.op_set):
      return "CNHW"
    return "NHWC"

  # ------------------------------------------------------------------ parts

  @property
  def fluorescence(self) -> tuple[Modality, ...]:
    return tuple(m for m in self.modalities if m.fluorescence)

  def is_reduction(self, part: str) -> bool:
    """Whether learnable part ``part`` is a reduction cell (stems never are)."""
    return not parts.is_stem(part) and parts.get_cell_kind(part).reduction

  def topologies(self) -> dict[str, Topology]:
    """The learnable parts in registry order (the paper's: fusing, fl, normal, reduce)."""
    out = {}
    for stem in self.active_stems():
      if self.stem_kind(stem.name) == "learnable":
        n_in = len(self.stem_inputs(stem.name))
        out[stem.name] = Topology(n_in, self.stem_inner_nodes, concat_last=True)
    for kind in parts.cell_kinds():
      if kind.name in self.cells:
        out[kind.name] = Topology(2, kind.inner_nodes or self.cell_inner_nodes)
    return out

  def log_structure(self, log: logging.Logger | None = None):
    log = log or logging.getLogger("dlsjax")
    for name, kind in self.stems:
      if kind != "off" and not self.stem_inputs(name):
        title = parts.get_stem(name).title
        log.info(
          "no input modality of the %s among %s: the %s is omitted",
          title,
          [m.name for m in self.modalities],
          title,
        )


def modality_images(spec: NetworkSpec, images) -> list:
  """``images[m.name]`` for every modality of ``spec`` in order, checked: present, ``[B, H, W, C]``
  with the modality's channels, one batch and spatial size for all (a clear error otherwise)."""
  out = []
  for m in spec.modalities:
    if m.name not in images:
      raise ValueError(f"missing modality {m.name!r}; got {sorted(images)}")
    x = images[m.name]
    if x.ndim != 4 or x.shape[-1] != m.channels:
      raise ValueError(f"modality {m.name!r}: expected [B, H, W, {m.channels}], got {x.shape}")
    out.append(x)
  shapes = {m.name: x.shape for m, x in zip(spec.modalities, out, strict=True)}
  if len({s[:3] for s in shapes.values()}) != 1:
    raise ValueError(f"modalities have mismatched batch/spatial sizes: {shapes}")
  return out


def dls_cells(k_r: int, k: int) -> tuple[str, ...]:
  """``K_r`` groups of one reduction cell followed by ``K`` normal cells (reduction first)."""
  return ("reduce", *("normal",) * k) * k_r


def mmnas_cells(k_r: int) -> tuple[str, ...]:
  """MMNAS: one normal cell fusing the modalities, then reduction cells only (models.py)."""
  return ("normal", *("reduce",) * k_r)


def darts_cells(layers: int) -> tuple[str, ...]:
  """DARTS layout: reductions at ``layers // 3`` and ``2 * layers // 3``."""
  red = {layers // 3, 2 * layers // 3}
  return tuple("reduce" if i in red else "normal" for i in range(layers))


def _remat_option(value) -> bool | str:
  """``model.dag_remat``: ``auto`` | ``on`` | ``off`` (or a bool) -> NetworkSpec.dag_remat."""
  table = {"auto": "auto", "on": True, "off": False, True: True, False: False}
  if value not in table:
    raise ValueError(f"model.dag_remat must be 'auto', 'on' or 'off', got {value!r}")
  return table[value]


def spec_from_config(model_cfg, *, phase: str = "search") -> NetworkSpec:
  """Build a NetworkSpec from a ``config.model`` ConfigDict.

  ``phase`` picks the channel count and depth: ``search`` uses ``c_sin_search``
  and ``k_search``; ``train`` uses ``c_sin_train`` and ``k_train``.
  """
  m = model_cfg
  for field in ("modalities", "num_classes", "resolution"):
    if m.get(field) is None:
      raise ValueError(
        f"model.{field} is None (take it from the dataset): fit the config to a built dataset "
        "first (dlsjax.data.fit.fit_config), or set it"
      )
  if phase not in ("search", "train"):
    raise ValueError(f"phase must be 'search' or 'train', got {phase!r}")
  c_sin = m.c_sin_search if phase == "search" else m.c_sin_train
  if m.layout == "dls":
    k = m.k_search if phase == "search" else m.k_train
    cells = dls_cells(m.k_r, k)
  elif m.layout == "darts":
    cells = darts_cells(m.layers_search if phase == "search" else m.layers_train)
  elif m.layout == "mmnas":
    cells = mmnas_cells(m.k_r)
  else:
    raise ValueError(f"config.model.layout must be 'dls', 'darts' or 'mmnas', got {m.layout!r}")
  modalities = tuple(
    Modality(d["name"], int(d.get("channels", 3)), bool(d.get("fluorescence", False)))
    for d in m.modalities
  )
  cell_channels = c_sin // m.cell_channels_divisor if m.cell_channels_divisor else None
  if m.layout == "darts":
    cell_channels = m.darts_c_search if phase == "search" else m.darts_c_train
    c_sin = m.darts_stem_multiplier * cell_channels
  op_set = m.op_set
  if isinstance(op_set, str) and "," in op_set:  # "none,skip_connect,my_op"
    op_set = tuple(n.strip() for n in op_set.split(",") if n.strip())
  elif not isinstance(op_set, str):
    op_set = tuple(op_set)
  return NetworkSpec(
    modalities=modalities,
    num_classes=m.num_classes,
    c_sin=c_sin,
    cells=cells,
    cell_channels=cell_channels,
    op_set=op_set,
    c_sout=m.get("c_sout", None),
    stems={s.name: m.get(s.config_field, s.default) for s in parts.stems()},
    stem_inner_nodes=m.stem_inner_nodes,
    cell_inner_nodes=m.cell_inner_nodes,
    fl_stem_cells=m.fl_stem_cells,
    resolution=m.resolution,
    depthwise_impl=m.depthwise_impl,
    dag_remat=_remat_option(m.get("dag_remat", "auto")),
    dag_layout=m.get("dag_layout", "auto"),
    dag_schedule=m.get("dag_schedule", "auto"),
    share_cell_bodies=bool(m.get("share_cell_bodies", True)),
    dtype=str(m.get("dtype", "float32")),
  )
