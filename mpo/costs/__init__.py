"""The cost model of Boyd et al. (2017), one definition for simulator, planner and training.

See :mod:`mpo.costs.base` (terms that name themselves, the registry, the
model), :mod:`mpo.costs.terms` (half spread, market impact, borrow fee) and
:mod:`mpo.costs.estimates` (the planner's and the simulator's sigma and
volume).
"""

from mpo.costs.base import (
    COST_TERMS,
    CostModel,
    CostTerm,
    SimulatorOnlyCost,
    TermParams,
    named,
)
from mpo.costs.estimates import SIMULATOR_MODES, CostEstimates, ewm_last
from mpo.costs.fixed import FixedTerm
from mpo.costs.terms import (
    BorrowCost,
    HoldingTerm,
    ImpactCost,
    ImpactTerm,
    SpreadCost,
    SpreadTerm,
)

__all__ = [
    "COST_TERMS",
    "SIMULATOR_MODES",
    "BorrowCost",
    "CostEstimates",
    "CostModel",
    "CostTerm",
    "FixedTerm",
    "HoldingTerm",
    "ImpactCost",
    "ImpactTerm",
    "SpreadCost",
    "SimulatorOnlyCost",
    "SpreadTerm",
    "TermParams",
    "ewm_last",
    "named",
]
