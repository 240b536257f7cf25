"""The built-in cost terms of Boyd et al. (2017): half spread, 1.5-power impact, borrow fee.

Per asset ``i`` and period ``t``, for a trade ``z_i`` (fraction of the portfolio
value ``v``), the transaction cost as a fraction of ``v`` is

    half_spread * |z_i|  +  b * sigma_i * |z_i|^1.5 / (V_i / v)^0.5

with ``sigma_i`` and ``V_i`` from :class:`~mpo.costs.estimates.CostEstimates`
(the planner's estimates use data strictly before ``t``; the simulator charges
the realised values by default). The holding cost charges an annual borrow fee
on short positions.
"""

from __future__ import annotations

from typing import Annotated

import cvxportfolio as cvx
import cvxpy as cp
import numpy as np
from cvxportfolio.costs import SimulatorCost
from pydantic import ConfigDict, Field

from mpo.costs.base import COST_TERMS, CostTerm, TermParams
from mpo.costs.estimates import CostEstimates
from mpo.errors import SpecError

__all__ = ["BorrowCost", "HoldingTerm", "ImpactCost", "ImpactTerm", "SpreadCost", "SpreadTerm"]


# ------------------------------------------------------------------ half spread
class SpreadCost(cvx.TransactionCost):
    """Linear cost ``half_spread * |z|`` (half the bid-ask spread)."""

    def __init__(self, half_spread: float):
        super().__init__(a=half_spread, b=None)


@COST_TERMS.register("spread")
class SpreadTerm(CostTerm):
    """Half the bid-ask spread on every traded dollar."""

    class Params(TermParams):
        half_spread: Annotated[float, Field(ge=0, le=0.1)] = Field(
            default=0.002, description="Half the bid-ask spread (0.002 = 20 bps)."
        )

    @property
    def enabled(self) -> bool:
        return self.params.half_spread > 0

    def simulator_term(self):
        return SpreadCost(self.params.half_spread)

    def planner_term(self):
        return SpreadCost(self.params.half_spread)

    def training_cost(self, z, *, sigma, volume, value):
        return self.params.half_spread * z.abs().sum(-1)


# ------------------------------------------------------------------ market impact
class ImpactCost(SimulatorCost):
    """Market impact ``b * sigma * |z|^1.5 / (V / v)^0.5``.

    In the objective (``role="planner"``) ``sigma`` and ``V`` are the planner's
    estimates, known at ``t``; in the simulator (``role="simulator"``) they are
    what :class:`CostEstimates` says the market charges (realised by default).
    """

    def __init__(self, b: float, *, estimates: CostEstimates, role: str = "planner"):
        self.b = float(b)
        self.estimates = estimates
        self.role = role
        self._multiplier: cp.Parameter | None = None
        super().__init__()

    def initialize_estimator(self, universe, **kwargs):
        self._multiplier = cp.Parameter(len(universe) - 1, nonneg=True)
        super().initialize_estimator(universe=universe, **kwargs)

    def values_in_time(self, t, past_returns, past_volumes, current_portfolio_value, **kwargs):
        if past_volumes is None:
            raise SpecError(
                "ImpactCost needs volumes; MarketData always provides observed volumes or the "
                "stated average-daily-volume assumption."
            )
        tickers = past_returns.columns[:-1]
        sigma = self.estimates.planner_sigma(t, past_returns)
        volume = self.estimates.planner_volume(t, past_volumes, tickers)
        self._multiplier.value = self._coefficient(sigma, volume, current_portfolio_value)

    def _coefficient(self, sigma, volume, value: float) -> np.ndarray:
        # cvxportfolio's TransactionCost evaluates exactly this expression (its 1e-8 guards a
        # zero volume): the same floats give bit-identical problems, so a hand-written
        # cvxportfolio policy and this one agree to the last digit (tests/test_byo.py)
        return (self.b * sigma) / ((volume + 1e-8) / value) ** 0.5

    def simulate(
        self,
        t,
        u,
        h_plus,
        past_volumes,
        past_returns,
        current_prices,
        current_weights,
        current_portfolio_value,
        current_returns=None,
        current_volumes=None,
        **kwargs,
    ):
        if self.role == "planner":  # used as a simulator cost directly: charge estimates
            self.values_in_time(
                t=t,
                past_returns=past_returns,
                past_volumes=past_volumes,
                current_portfolio_value=current_portfolio_value,
            )
            coef = self._multiplier.value
        else:
            tickers = past_returns.columns[:-1]
            sigma = self.estimates.simulator_sigma(t, past_returns, current_returns)
            volume = self.estimates.simulator_volume(t, past_volumes, current_volumes, tickers)
            coef = self._coefficient(sigma, volume, current_portfolio_value)
        z = np.abs(u.to_numpy(dtype=float)[:-1]) / current_portfolio_value
        return float(coef @ z**1.5) * current_portfolio_value

    def compile_to_cvxpy(self, z, **kwargs):
        return cp.power(cp.abs(z[:-1]), 1.5) @ self._multiplier


@COST_TERMS.register("impact")
class ImpactTerm(CostTerm):
    """Market impact: ``b * sigma * |z|^1.5 / (V / v)^0.5``."""

    class Params(TermParams):
        model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

        b: Annotated[float, Field(ge=0, le=100)] = Field(
            default=1.0,
            alias="impact",
            description="Coefficient b of the 1.5-power impact term (0: off); flat key "
            "`impact` in [costs].",
        )

    @property
    def enabled(self) -> bool:
        return self.params.b > 0

    def min_history(self) -> int:
        return self.estimates.min_history

    def simulator_term(self):
        return ImpactCost(self.params.b, estimates=self.estimates, role="simulator")

    def planner_term(self):
        return ImpactCost(self.params.b, estimates=self.estimates, role="planner")

    def training_cost(self, z, *, sigma, volume, value):
        coef = self.params.b * sigma / (volume / value[..., None]).sqrt()
        return (coef * z.abs().pow(1.5)).sum(-1)


# ------------------------------------------------------------------ borrow fee
class BorrowCost(cvx.HoldingCost):
    """Borrow fee on short positions, annualised percentage ``short_fee``."""

    def __init__(self, short_fee: float):
        super().__init__(short_fees=short_fee)


@COST_TERMS.register("holding")
class HoldingTerm(CostTerm):
    """Annual borrow fee on short positions (percent per year, cvxportfolio's convention)."""

    multiplier = "gamma_hold"

    class Params(TermParams):
        short_fee: Annotated[float, Field(ge=0, le=100)] = Field(
            default=0.0, description="Annual borrow fee on shorts, in percent (0: off)."
        )

    @property
    def enabled(self) -> bool:
        return self.params.short_fee > 0

    def simulator_term(self):
        return BorrowCost(self.params.short_fee)

    def planner_term(self):
        return BorrowCost(self.params.short_fee)
