"""What every derivation method shares: options, errors, and the registry of methods.

A method is a function ``run(ctx: Context) -> Result`` registered under a
name; ``derive.method`` in a config names it. The job (``dlsjax.derive``)
reads the finished search, builds the :class:`Context` (with a vmapped
:class:`~dlsjax.derivation.scoring.Evaluator` over the alpha half when the
method scores candidates) and writes the genotype and the log. A new method
is one file::

    from dlsjax import derivation
    from dlsjax.derivation import scoring

    @derivation.register_method("reverse_mpds")
    def run(ctx):
      order = list(reversed(scoring.decisions(ctx.spec)))
      masks, log = scoring.run_decisions(ctx.evaluator, order, progress=ctx.progress)
      return derivation.Result(scoring.choice_from_masks(masks, ctx.spec.topologies()), log)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

METRICS = ("accuracy", "loss", "auc")


class DeriveError(RuntimeError):
  """A derivation that cannot run (the message says why and what to do)."""


@dataclasses.dataclass(frozen=True)
class DeriveOptions:
  """``config.derive``."""

  method: str = "mpds"  # a registered method: mpds (paper Algorithm 1) | argmax | pt | ...
  metric: str = "accuracy"  # accuracy | loss | auc (micro), on the alpha half
  batch_size: int = 16  # validation batch, BN uses its statistics (the paper's search batch)
  max_images: int = 0  # metric on the first N images of the alpha half (0: all, as the paper)
  chunk: int = 0  # candidates per vmapped evaluation (0: the non-zero ops, one call per edge)
  vmap: bool = True  # False: one compiled call per candidate (the reference loop)
  pt_tune_epochs: int = 5  # PT only: weight fine-tuning epochs between decisions
  pt_tune_max_steps: int = 0  # PT only: cap on the steps of one tuning period (0: none)
  pt_lr_factor: float = 0.1  # PT only: fine-tuning lr = search.w_lr * factor, cosine
  pt_seed: int = 0  # PT only: the random decision order

  def __post_init__(self):
    if self.method not in _METHODS:
      raise ValueError(f"derive.method must be one of {methods()}, got {self.method!r}")
    if self.metric not in METRICS:
      raise ValueError(f"derive.metric must be one of {METRICS}, got {self.metric!r}")
    if self.chunk < 0 or self.batch_size < 1:
      raise ValueError(f"derive.chunk must be >= 0 and derive.batch_size >= 1, got {self}")

  @classmethod
  def from_config(cls, derive_cfg, **overrides) -> DeriveOptions:
    from dlsjax.configs import dataclass_from_config

    base = dataclass_from_config(cls, derive_cfg or {})
    return dataclasses.replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclasses.dataclass
class Context:
  """What a method gets: the finished search and, if it scores candidates, an evaluator.

  Attributes:
    config: the search's config.
    spec: the supernet's ``NetworkSpec``.
    hparams: the search's ``bilevel.SearchHParams``.
    state: the search's final state on the host (``params``, ``batch_stats``,
      ``alphas``, ...).
    opts: ``config.derive`` with the command's overrides.
    data_dir: the built dataset of the search.
    evaluator: a ``scoring.Evaluator`` over the alpha half, or None for a
      method registered with ``scores=False``.
    progress: show a progress bar.
  """

  config: object
  spec: object
  hparams: object
  state: dict
  opts: DeriveOptions
  data_dir: str | None
  evaluator: object | None
  progress: bool = False


@dataclasses.dataclass
class Result:
  """A method's answer: op index per edge of every part (-1 = pruned), the decision log, and
  anything else worth recording in ``derivation_log.json``."""

  choice: dict
  decisions: list = dataclasses.field(default_factory=list)
  info: dict = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Method:
  name: str
  run: Callable[[Context], Result]
  scores: bool = True  # needs the validation batches and a scoring.Evaluator


_METHODS: dict[str, Method] = {}


def register_method(name: str, *, scores: bool = True, overwrite: bool = False):
  """Decorator registering ``run(ctx: Context) -> Result`` as derivation method ``name``."""

  def decorator(run):
    if name in _METHODS and not overwrite:
      raise ValueError(f"derivation method {name!r} is already registered")
    _METHODS[name] = Method(name, run, scores)
    return run

  return decorator


def unregister_method(name: str) -> None:
  _METHODS.pop(name, None)


def get_method(name: str) -> Method:
  if name not in _METHODS:
    raise KeyError(f"unknown derivation method {name!r}; registered: {methods()}")
  return _METHODS[name]


def methods() -> tuple[str, ...]:
  return tuple(_METHODS)
