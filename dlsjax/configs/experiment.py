"""The base config of ``dlsjax experiment`` for each budget (``get_config(budget)``).

* ``paper``: every value the paper's (search ``paper``, training ``paper_train``,
  5 runs, throughput over 50 batches of 128 as Table I).
* ``demo``: the ``demo`` config's reductions plus shorter training and smaller
  baselines, so a whole table finishes in under 30 minutes on 2 CPU cores.
* ``tiny``: the test's budget (``demo:tiny`` and minute-sized baselines).

The experiment adapts it to the dataset (modalities, classes) and then applies
each row's changes (``dlsjax/experiment.py``); ``table*.md`` lists what the
budget reduced relative to the paper.
"""

from __future__ import annotations

import ml_collections

from dlsjax.configs import get_config as named

BUDGETS = ("paper", "demo", "tiny")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  budget = arg or "paper"
  if budget == "paper":
    c = named("paper")
    c.train = named("paper_train").train
    c.evaluate = ml_collections.ConfigDict(
      dict(bootstrap=1000, throughput_batch=128, throughput_batches=50)
    )
    c.experiment = ml_collections.ConfigDict(dict(runs=5))
    return c
  if budget == "demo":
    c = named("demo")
    # 5 training epochs (demo 12, paper 110): the first demo-budget table1 with 8 epochs
    # and larger baselines took 51 min on a shared 2-core CPU (benchmarks/RESULTS.md).
    c.train.epochs = 5
    c.evaluate.throughput_batches = 3
    c.experiment = ml_collections.ConfigDict(dict(runs=1))
    b = c.model.baselines
    # At the data's own resolution (paper: 224 for ResNet-18 / EfficientNet-B0) and narrower.
    b.resnet18.update(dict(stem="cifar", input_size=0, width=16))
    b.efficientnet_b0.update(dict(input_size=0, stem_stride=1, width=0.25, depth=0.5))
    b.pyramidnet_shakedrop.update(dict(depth=20, alpha=48.0))  # paper 272 / 200
    return c
  if budget == "tiny":
    c = named("demo", "tiny")  # unchanged: the demo test's compiled steps serve it
    c.experiment = ml_collections.ConfigDict(dict(runs=1))
    b = c.model.baselines
    b.resnet18.update(dict(stem="cifar", input_size=0, width=4, stage_blocks=(1, 1)))
    b.efficientnet_b0.update(dict(input_size=0, stem_stride=1, width=0.25, depth=0.25))
    b.pyramidnet_shakedrop.update(dict(depth=11, alpha=12.0))
    return c
  raise ValueError(f"experiment budget must be one of {BUDGETS}, got {budget!r}")
