"""``argmax``: DARTS' derivation (the "- MPDS" ablation of Table III).

Per edge the operation of largest alpha (``none`` excluded), per inner node the
``k`` precedents whose best operation weighs most (``genotype.derive_argmax``).
No scoring: the alphas alone decide.
"""

from __future__ import annotations

from dlsjax import genotype
from dlsjax.derivation.base import Context, Result, register_method


@register_method("argmax", scores=False)
def run(ctx: Context) -> Result:
  choice = genotype.derive_argmax(ctx.state["alphas"], ctx.spec.topologies(), ctx.spec.op_set)
  return Result(choice)
