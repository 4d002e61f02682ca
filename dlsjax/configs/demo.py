"""The demo pipeline (``make demo``): search -> derive -> train -> evaluate on the synthetic set.

One config with every section (``model``, ``data``, ``search``, ``derive``,
``train``) so each stage reads the same model. It keeps the paper's macro
structure (both learnable stems, reduction-first cell groups, the 10-op set,
first-order search, MPDS, focal loss, CutMix, DropPath) and shrinks what
costs time on a 2-core CPU; ``report.md`` lists every reduction against the
paper. ``get_config("demo", "tiny")`` is the smaller variant the test runs.
"""

from __future__ import annotations

import ml_collections

from dlsjax.configs import get_config as named


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  c = named("paper")  # model, data, search, derive: the paper's
  c.train = named("paper_train").train
  c.synth = ml_collections.ConfigDict(dict(specimens=240, patients=24, size=96, seed=0))
  c.runs = 1  # training seeds (paper: 5 runs)
  m, s, t = c.model, c.search, c.train
  # From the dataset (dlsjax/data/fit.py), so the demo runs on any dataset folder.
  m.modalities = None
  m.num_classes = None
  c.classes = None
  m.resolution = 32  # paper 64
  m.k_r = 2  # paper 3 groups of (reduction + normal)
  m.c_sin_search = 4  # paper 48
  m.c_sin_train = 16  # paper 144
  m.cell_channels_divisor = 2  # paper preset 4
  # The search: 6 epochs of ~5 steps (paper: 50 of ~30, ~1,500 steps). At the
  # paper's rates the alphas would move by ~0.02 in 30 steps and MPDS would
  # derive from an untrained supernet; so the weights learn at the training
  # rate, the alphas wait 2 epochs for them and then move at 0.08 for ~20
  # steps (the paper: 6e-4 for ~1,500; at 0.05 no edge's top op reached twice
  # the uniform weight), and the report says so.
  s.epochs = 6  # paper 50
  s.w_lr = 0.025  # paper 2.5e-3
  s.alpha_lr = 0.08  # paper 6e-4
  s.alpha_warmup_epochs = 2  # paper 0
  s.crop_padding = 4  # paper 8 (at 64x64)
  c.derive.max_images = 16  # MPDS metric on 16 images of the alpha half (paper: all)
  t.epochs = 12  # paper 110
  t.batch_size = 32  # paper 128
  t.lr = 0.025  # paper 2.5e-3 over 110 epochs; a short run needs a larger step
  t.crop_padding = 4
  c.evaluate = ml_collections.ConfigDict(
    dict(bootstrap=1000, throughput_batch=128, throughput_batches=3)
  )
  if arg == "tiny":  # the test's pipeline: minutes of compile, seconds of compute
    c.synth.update(dict(specimens=48, patients=8, size=24))
    c.data.test_patients = 2
    m.resolution = 8
    m.k_r = 1
    m.c_sin_search = 4
    m.c_sin_train = 4
    m.op_set = "none,skip_connect,sep_conv_3x3"
    # Stems by concatenation (the "- Learnable Stems" ablation): the learnable stems
    # double the compile time of every stage; the demo itself keeps them.
    m.fusing_stem = "concat"
    m.fl_stem = "concat"
    s.epochs = 1
    s.alpha_warmup_epochs = 0
    s.batch_size = 8
    s.crop_padding = 2
    c.derive.batch_size = 8
    c.derive.max_images = 8
    t.epochs = 2
    t.batch_size = 8
    t.crop_padding = 2
    c.evaluate.update(dict(bootstrap=50, throughput_batch=8, throughput_batches=2))
  elif arg is not None:
    raise ValueError(f"demo config: unknown variant {arg!r} (tiny)")
  return c
