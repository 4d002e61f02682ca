"""The learnable parts of a network as data: a registry of stems and one of cell kinds.

A **stem** turns some of the modalities' images (each first through its own
manual 3x3 stem) into one feature map that feeds the cells. The registry holds
the paper's two: the Fusing Stem over every modality, whose output is the
first cell's ``s1`` (and ``s0`` when no stem feeds that), and the FL Stem over
the fluorescence modalities, whose output is ``s0`` of the first
``fl_stem_cells`` cells. Each stem is set per network to one of

* ``learnable``: a searchable DAG over its inputs (a part of the supernet with
  its own alphas, masks and derived genotype; the last inner node concatenates);
* ``concat``: concatenation + 1x1 ReLU-conv-BN (the paper's ablations);
* ``identity``: its single input as it is (a one-modality network, as DARTS);
* ``off``.

A researcher adds a stem from one file of their own::

    from dlsjax import parts

    parts.register_stem(
      "polar", inputs=lambda m: m.name.startswith("POL"), feeds="s0", default="off"
    )

and turns it on with one config line, ``config.model.polar_stem = "learnable"``
(the config field of a stem is ``model.<name>_stem``). Search, derivation
(MPDS, argmax, PT), training, ``describe`` and the figures then treat it as
they treat the Fusing Stem. Stems that feed the same cell input are added
(all stems output ``c_sout`` channels at the manual stems' resolution).

A **cell kind** names one kind of cell in ``NetworkSpec.cells``; every cell of
a kind shares one set of alphas (``normal`` and ``reduce`` in DARTS). A kind
with ``reduction=True`` halves the resolution and doubles the channels. A new
kind is one :func:`register_cell_kind` call plus a layout that uses it.

The registries' order is the parts' order everywhere: in ``alphas``, the
genotype and the derivation (stems first, then cell kinds).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

STEM_KINDS = ("learnable", "concat", "identity", "off")
FEEDS = ("s1", "s0")


@dataclasses.dataclass(frozen=True)
class StemDef:
  """A registered stem.

  Attributes:
    name: the part's name in ``alphas``, masks and genotypes; its module is
      ``<name>_stem`` and its config field ``model.<name>_stem``.
    inputs: which modalities it reads, a predicate over ``netspec.Modality``
      (in the order of ``model.modalities``). A stem with no such modality is
      omitted, with a log line.
    feeds: ``s1`` (the first cell's ``s1``) or ``s0`` (``s0`` of the first
      ``fl_stem_cells`` cells).
    default: its kind when the config does not name one.
    title: its name in logs (``FL Stem``); default ``<name> stem``.
  """

  name: str
  inputs: Callable
  feeds: str
  default: str = "off"
  title: str = ""

  def __post_init__(self):
    if not self.title:
      object.__setattr__(self, "title", f"{self.name} stem")

  @property
  def module_name(self) -> str:
    return f"{self.name}_stem"

  @property
  def config_field(self) -> str:
    return f"{self.name}_stem"


@dataclasses.dataclass(frozen=True)
class CellKind:
  """A registered cell kind.

  Attributes:
    name: the name in ``NetworkSpec.cells``, alphas and genotypes.
    reduction: its operations on the inputs have stride 2 and the cell
      doubles the channels.
    inner_nodes: inner nodes of its DAG; ``None`` = ``NetworkSpec.cell_inner_nodes``.
  """

  name: str
  reduction: bool
  inner_nodes: int | None = None


_STEMS: dict[str, StemDef] = {}
_CELLS: dict[str, CellKind] = {}


def _check_name(name: str, taken: dict, other: dict, what: str, overwrite: bool) -> None:
  if not name.isidentifier():
    raise ValueError(f"{what} name {name!r} must be a Python identifier")
  if name in other:
    raise ValueError(f"{what} name {name!r} is already a {'stem' if other is _STEMS else 'cell'}")
  if name in taken and not overwrite:
    raise ValueError(f"{what} {name!r} is already registered (pass overwrite=True to replace it)")


def register_stem(
  name: str,
  *,
  inputs: Callable,
  feeds: str,
  default: str = "off",
  title: str = "",
  overwrite: bool = False,
) -> StemDef:
  """Register a stem (see the module docstring); returns its :class:`StemDef`."""
  _check_name(name, _STEMS, _CELLS, "stem", overwrite)
  if feeds not in FEEDS:
    raise ValueError(f"stem {name!r}: feeds must be one of {FEEDS}, got {feeds!r}")
  if default not in STEM_KINDS:
    raise ValueError(f"stem {name!r}: default must be one of {STEM_KINDS}, got {default!r}")
  stem = StemDef(name, inputs, feeds, default, title)
  _STEMS[name] = stem
  return stem


def register_cell_kind(
  name: str, *, reduction: bool, inner_nodes: int | None = None, overwrite: bool = False
) -> CellKind:
  """Register a cell kind (see the module docstring); returns its :class:`CellKind`."""
  _check_name(name, _CELLS, _STEMS, "cell kind", overwrite)
  kind = CellKind(name, bool(reduction), inner_nodes)
  _CELLS[name] = kind
  return kind


def unregister(name: str) -> None:
  """Remove a stem or cell kind (tests that register one of their own clean up with this)."""
  _STEMS.pop(name, None)
  _CELLS.pop(name, None)


def stems() -> tuple[StemDef, ...]:
  """Every registered stem, in registration order (the parts' order)."""
  return tuple(_STEMS.values())


def get_stem(name: str) -> StemDef:
  if name not in _STEMS:
    raise KeyError(f"unknown stem {name!r}; registered: {sorted(_STEMS)}")
  return _STEMS[name]


def cell_kinds() -> tuple[CellKind, ...]:
  return tuple(_CELLS.values())


def get_cell_kind(name: str) -> CellKind:
  if name not in _CELLS:
    raise KeyError(f"unknown cell kind {name!r}; registered: {sorted(_CELLS)}")
  return _CELLS[name]


def is_stem(name: str) -> bool:
  return name in _STEMS


# --------------------------------------------------------------------------- #
# The paper's parts
# --------------------------------------------------------------------------- #

register_stem(
  "fusing",
  inputs=lambda m: True,
  feeds="s1",
  default="learnable",
  title="Fusing Stem",  # every modality (paper, Section II-A.3)
)
register_stem(
  "fl",
  inputs=lambda m: m.fluorescence,
  feeds="s0",
  default="learnable",
  title="FL Stem",  # the fluorescence modalities (NIR-I, NIR-II)
)
register_cell_kind("normal", reduction=False)
register_cell_kind("reduce", reduction=True)
