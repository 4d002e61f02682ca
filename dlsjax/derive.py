"""The ``derive`` job: read a finished search, run a derivation method, write its outputs.

The methods (``mpds``, ``argmax``, ``pt``) and their scoring engine live in
``dlsjax.derivation``; this module finds the search's checkpoint and data,
builds the method's :class:`~dlsjax.derivation.Context` and writes
``genotype.json``, ``derivation_log.json`` and ``genotype.png``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import pathlib
import time
from collections.abc import Mapping

import jax
import ml_collections
import numpy as np

from dlsjax import bilevel, checkpoint, genotype, netspec
from dlsjax.derivation import Context, DeriveError, DeriveOptions, get_method
from dlsjax.derivation.scoring import Evaluator

log = logging.getLogger(__name__)


def load_search(workdir: pathlib.Path):
  """``(config, spec, hparams, state, meta)`` of the finished search in ``workdir``."""
  cfg_path = workdir / "config.json"
  ckpt_dir = workdir / "checkpoints"
  if not cfg_path.is_file() or not ckpt_dir.is_dir():
    raise DeriveError(
      f"{workdir}: not a search run (no config.json and checkpoints/); "
      "run `dlsjax search --workdir ...` first"
    )
  config = ml_collections.ConfigDict(json.loads(cfg_path.read_text()))
  spec = netspec.spec_from_config(config.model, phase="search")
  ckpt = checkpoint.Checkpoints(ckpt_dir)
  try:
    if ckpt.latest_step() is None:
      raise DeriveError(f"{ckpt_dir}: no checkpoint; the search has not finished an epoch")
    meta = ckpt.meta()
    epochs = int(config.search.epochs)
    if meta["epoch"] < epochs or meta["batch"] != 0:
      raise DeriveError(
        f"{workdir}: the search is not finished (checkpoint at epoch {meta['epoch']} of "
        f"{epochs}, batch {meta['batch']}); continue it with `dlsjax search --resume`"
      )
    h = bilevel.SearchHParams.from_config(config.search, steps_per_epoch=1)
    template = jax.eval_shape(lambda: bilevel.init_state(spec, h, jax.random.PRNGKey(0)))
    state, meta = ckpt.restore(template)
  finally:
    ckpt.close()
  return config, spec, h, state, meta


def validation_batches(config, data_dir, batch_size: int, max_images: int = 0) -> list[dict]:
  """The alpha half of the training split (as in the search), in fixed full batches.

  ``max_images`` > 0 keeps the first that many (rounded down to full batches).
  """
  from dlsjax.data import dataset, pipeline

  ds = dataset.load(data_dir)
  src = ds.source("train")
  _, a_idx = pipeline.search_halves(len(src), int(config.seed))
  n = len(a_idx) if max_images <= 0 else min(len(a_idx), max_images)
  n = (n // batch_size) * batch_size
  if n == 0:
    raise DeriveError(
      f"{data_dir}: the alpha half has {len(a_idx)} specimens, fewer than one batch of "
      f"{batch_size} (set derive.batch_size)"
    )
  batches = pipeline.eval_batches(
    ds, src, np.sort(a_idx[:n]), batch_size=batch_size, resolution=config.model.resolution
  )
  return [{k: b[k] for k in ("images", "label")} for b in batches]


def parse_overrides(pairs) -> dict:
  """``--config.derive.KEY=VALUE`` pairs as ``{KEY: value}``, typed by the field's default;
  a key outside ``derive`` or not an option is an error naming it."""
  from dlsjax import configs
  from dlsjax.configs import common

  base = ml_collections.ConfigDict({"derive": common.derive_config(batch_size=0)})
  out = {}
  for key, raw in pairs:
    if not key.startswith("derive."):
      raise configs.ConfigError(
        f"--config.{key}: derive reads the search's config; only derive.* fields can be set"
      )
    configs.override(base, key, raw, spec="derive")
    field = key.removeprefix("derive.")
    out[field] = base.derive[field]
  return out


def derive(
  workdir,
  *,
  data_dir=None,
  method: str | None = None,
  metric: str | None = None,
  overrides: Mapping | None = None,
  progress: bool = True,
) -> genotype.Genotype:
  """Derive the genotype of the search in ``workdir`` and write the outputs there.

  The options are the search config's ``derive`` section with ``overrides`` (field ->
  value, e.g. from :func:`parse_overrides`) and then ``method`` / ``metric`` applied.
  """
  workdir = pathlib.Path(workdir)
  config, spec, h, state, _ = load_search(workdir)
  dcfg = ml_collections.ConfigDict(config.get("derive", {}).to_dict() if "derive" in config else {})
  for k, v in (overrides or {}).items():
    dcfg[k] = v
  opts = DeriveOptions.from_config(dcfg, method=method, metric=metric)
  topos = spec.topologies()
  t0 = time.perf_counter()
  info = {"method": opts.method, "metric": opts.metric, "options": dataclasses.asdict(opts)}
  method = get_method(opts.method)
  ev = None
  if method.scores:
    data_dir = data_dir or _recorded_data_dir(workdir)
    batches = validation_batches(config, data_dir, opts.batch_size, opts.max_images)
    ev = Evaluator(
      spec,
      state,
      state["alphas"],
      batches,
      opts=opts,
      focal_gamma=h.focal_gamma,
      focal_alpha=h.focal_alpha,
      mode=config.search.get("parallel", "pmap"),
    )
  ctx = Context(config, spec, h, state, opts, data_dir, ev, progress)
  result = method.run(ctx)
  choice, entries = result.choice, result.decisions
  info.update(result.info)
  if ev is not None:
    info.update(
      validation_images=len(ev.labels),
      devices=ev.n_devices,
      compilations=ev.compilations,
      candidate_evaluations=ev.evaluations,
    )
  geno = genotype.Genotype.from_choice(choice, topos, spec.op_set)
  info["seconds"] = round(time.perf_counter() - t0, 2)
  info["genotype"] = geno.to_dict()
  info["decisions"] = entries
  geno.save(workdir / "genotype.json")
  (workdir / "derivation_log.json").write_text(json.dumps(info, indent=1))
  from dlsjax import plots

  inputs = {s.name: tuple(m.name for m in spec.stem_inputs(s.name)) for s in spec.active_stems()}
  title = f"{opts.method} ({opts.metric})"
  plots.genotype_figure(geno, workdir / "genotype.png", title=title, modalities=inputs)
  log.info("derived in %.1f s:\n%s", info["seconds"], geno)
  return geno


def _recorded_data_dir(workdir: pathlib.Path) -> str:
  run = workdir / "search_run.json"
  if run.is_file():
    return json.loads(run.read_text())["data_dir"]
  raise DeriveError(f"{workdir}: no search_run.json recording the data; pass --data-dir")
