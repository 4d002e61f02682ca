"""``mpds``: the paper's Multi-Perturbation Derivation Strategy (Algorithm 1), the default.

For each learnable part in the order of the parts registry (the paper's:
fusing, fl, normal, reduce), first every edge in edge order (first inner node
to last, precedents in order): score the supernet with each non-``none``
operation removed (its mixing weight zeroed, no renormalisation) and
discretise the edge to the operation whose removal hurts most; then every
inner node in order: score the supernet with each precedent removed and keep
the ``k`` whose removal hurts most (``k`` = the part's number of inputs; the
concatenating last node of a learnable stem keeps all). Weights and alphas
stay frozen (no fine-tuning).
"""

from __future__ import annotations

from dlsjax.derivation import scoring
from dlsjax.derivation.base import Context, Result, register_method
from dlsjax.derivation.masks import choice_from_masks


@register_method("mpds")
def run(ctx: Context) -> Result:
  order = scoring.decisions(ctx.spec)
  masks, entries = scoring.run_decisions(ctx.evaluator, order, progress=ctx.progress)
  return Result(choice_from_masks(masks, ctx.spec.topologies()), entries)
