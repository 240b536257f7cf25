"""A fixed fee per traded name (Boyd et al. 2017, section 2.3: non-convex), and its convex proxy.

The simulator charges exactly ``fee`` dollars for every asset whose trade in
the period exceeds ``min_trade`` dollars (smaller trades are solver round-off
and count as no trade). The fee is not convex in the trade, so the policy
sees an approximation, configured in the same table::

    [costs.fixed]
    fee = 10.0          # $ per traded name and period (0: off)
    min_trade = 1.0     # $: smaller trades are not charged
    amortize = 0.005    # planner: the fee spread over a trade of 0.5% of the value
    deadband = 5000.0   # policy: trades smaller than $5,000 are not made

``amortize`` and ``deadband`` are each policy's own (policies of one run may
differ in them; the fee itself is the market's and must be shared):

* ``amortize`` (convex, in the objective, times ``gamma_trade``): a linear
  cost ``fee / (amortize * v)`` per unit of weight traded, i.e. the fee
  charged in full on a trade of ``amortize`` of the portfolio value and pro
  rata otherwise; 0 leaves the planner blind to the fee;
* ``deadband`` (after the solve): trades smaller than ``deadband`` dollars are
  cancelled (cash absorbs them), so the policy never pays a fee for a trade
  too small to be worth it. A cancelled trade can leave a bound it was
  moving towards unmet by at most its own size.
"""

from __future__ import annotations

from typing import Annotated

import cvxportfolio as cvx
import cvxpy as cp
import numpy as np
from pydantic import Field

import mpo.costs.terms  # noqa: F401  (registered first: costs.parquet keeps Boyd et al.'s order)
from mpo.costs.base import COST_TERMS, CostTerm, SimulatorOnlyCost, TermParams

__all__ = ["FixedFeeCost", "FixedFeeProxy", "FixedTerm", "apply_deadband"]


class FixedFeeCost(SimulatorOnlyCost):
    """``fee`` dollars per asset traded by more than ``min_trade`` dollars."""

    def __init__(self, fee: float, min_trade: float):
        self.fee = float(fee)
        self.min_trade = float(min_trade)

    def simulate(self, t, u, **kwargs) -> float:
        traded = np.abs(np.asarray(u, dtype=float)[:-1]) > self.min_trade
        return self.fee * float(traded.sum())


class FixedFeeProxy(cvx.costs.Cost):
    """The planner's convex proxy: ``fee / (amortize * v) * sum |z_i|``."""

    def __init__(self, fee: float, amortize: float):
        self.fee = float(fee)
        self.amortize = float(amortize)

    def initialize_estimator(self, universe, **kwargs):
        self._rate = cp.Parameter(nonneg=True)

    def values_in_time(self, current_portfolio_value, **kwargs):
        self._rate.value = self.fee / (self.amortize * current_portfolio_value)

    def compile_to_cvxpy(self, w_plus, z, w_plus_minus_w_bm, **kwargs):
        return self._rate * cp.sum(cp.abs(z[:-1]))


def apply_deadband(w_plus, current_weights, value: float, deadband: float):
    """``w_plus`` with every asset trade below ``deadband`` dollars cancelled (cash last)."""
    w_plus = w_plus.copy()
    z = (w_plus - current_weights).to_numpy()
    small = np.abs(z[:-1]) * value < deadband
    if small.any():
        idx = np.flatnonzero(small)
        w_plus.iloc[idx] = current_weights.iloc[idx].to_numpy()
        w_plus.iloc[-1] = 1.0 - float(w_plus.iloc[:-1].sum())
    return w_plus


@COST_TERMS.register("fixed")
class FixedTerm(CostTerm):
    """A fixed fee per traded name: charged exactly, approximated in the policy."""

    class Params(TermParams):
        fee: Annotated[float, Field(ge=0)] = Field(
            default=0.0, description="Dollars per traded name and period (0: off)."
        )
        min_trade: Annotated[float, Field(ge=0)] = Field(
            default=1.0, description="Trades up to this many dollars are not charged."
        )
        amortize: Annotated[float, Field(ge=0, le=1)] = Field(
            default=0.0,
            description="Planner proxy: the fee spread over a trade of this fraction of the "
            "value (0: the planner ignores the fee). Each policy's own choice.",
            json_schema_extra={"policy_only": True},
        )
        deadband: Annotated[float, Field(ge=0)] = Field(
            default=0.0,
            description="Policy: trades below this many dollars are not made. Each policy's "
            "own choice.",
            json_schema_extra={"policy_only": True},
        )

    @property
    def enabled(self) -> bool:
        return self.params.fee > 0

    def simulator_term(self):
        return FixedFeeCost(self.params.fee, self.params.min_trade)

    def planner_term(self):
        if self.params.amortize <= 0:
            return None
        return FixedFeeProxy(self.params.fee, self.params.amortize)
