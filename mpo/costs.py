"""The cost model of Boyd et al. (2017), shared by the simulator and the optimiser.

Per asset ``i`` and period ``t``, for a trade of ``z_i`` (fraction of portfolio
value ``v``), the transaction cost as a fraction of ``v`` is

    half_spread * |z_i|  +  b * sigma_i * |z_i|^1.5 / (V_i / v)^0.5

where ``sigma_i`` is an exponentially weighted standard deviation of the
asset's past returns and ``V_i`` an exponentially weighted mean of its past
dollar volumes (both span ~10 periods by default, both computed strictly from
data before ``t``: no look-ahead). The holding cost charges an annual borrow
fee on short positions.

:class:`CostModel` is the single place those parameters live: it builds the
fresh cvxportfolio cost objects that go into the :class:`MarketSimulator`
(``simulator_costs``) and into the optimisation objective (``spread``,
``impact``, ``holding``), so the planner and the accountant charge exactly the
same model. The simulator records each term under its class name, which is why
spread and impact are separate classes (:class:`SpreadCost`,
:class:`ImpactCost`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import cvxportfolio as cvx
import cvxpy as cp
import numpy as np
import pandas as pd
from cvxportfolio.costs import SimulatorCost

from mpo.errors import SpecError

__all__ = ["CostModel", "SpreadCost", "ImpactCost", "BorrowCost", "ewm_last"]

logger = logging.getLogger(__name__)

#: Truncate exponential windows after this many spans (weight left < 1e-8).
_TRUNCATE_SPANS = 10


def ewm_last(frame: pd.DataFrame, span: float, kind: str) -> np.ndarray:
    """Last value of an exponentially weighted mean or std over ``frame``'s rows.

    Equals pandas' ``frame.ewm(span=span, adjust=True).mean()`` (or
    ``.std(bias=False)``) at the last row, computed on the last ``10 * span``
    rows only (older weights are below 1e-8), so each call costs O(span).
    NaN rows are not expected (``MarketData`` is rectangular).
    """
    x = frame.to_numpy(dtype=float)[-int(np.ceil(_TRUNCATE_SPANS * span)) :]
    alpha = 2.0 / (span + 1.0)
    weights = (1.0 - alpha) ** np.arange(len(x) - 1, -1, -1)
    total = weights.sum()
    mean = weights @ x / total
    if kind == "mean":
        return mean
    if len(x) < 2:
        return np.full(x.shape[1], np.nan)
    biased = weights @ (x - mean) ** 2 / total
    return np.sqrt(biased * total**2 / (total**2 - (weights**2).sum()))


class SpreadCost(cvx.TransactionCost):
    """Linear cost ``half_spread * |z|`` (half the bid-ask spread)."""

    def __init__(self, half_spread: float):
        super().__init__(a=half_spread, b=None)


class ImpactCost(SimulatorCost):
    """Market impact ``b * sigma * |z|^1.5 / (V / v)^0.5`` with lagged EWM estimates.

    ``sigma`` and ``V`` are estimated from past returns and past dollar volumes
    only; optimisation and simulation use the same estimates, so the simulator
    charges what the planner expected given the same information.
    """

    def __init__(self, b: float = 1.0, sigma_span: float = 10.0, volume_span: float = 10.0):
        self.b = float(b)
        self.sigma_span = float(sigma_span)
        self.volume_span = float(volume_span)
        self._multiplier: cp.Parameter | None = None
        super().__init__()

    def initialize_estimator(self, universe, **kwargs):
        self._multiplier = cp.Parameter(len(universe) - 1, nonneg=True)
        super().initialize_estimator(universe=universe, **kwargs)

    def values_in_time(self, past_returns, past_volumes, current_portfolio_value, **kwargs):
        if past_volumes is None:
            raise SpecError(
                "ImpactCost needs volumes; MarketData always provides observed volumes or the "
                "stated average-daily-volume assumption."
            )
        self._multiplier.value = self.multiplier(
            past_returns, past_volumes, current_portfolio_value
        )

    def multiplier(
        self, past_returns: pd.DataFrame, past_volumes: pd.DataFrame, portfolio_value: float
    ) -> np.ndarray:
        """``b * sigma / (V / v)^0.5`` per asset (cash column of ``past_returns`` dropped)."""
        sigma = ewm_last(past_returns.iloc[:, :-1], self.sigma_span, "std")
        volume = ewm_last(past_volumes, self.volume_span, "mean")
        sigma = np.nan_to_num(sigma, nan=0.0)
        return self.b * sigma / np.sqrt(volume / portfolio_value)

    def compile_to_cvxpy(self, z, **kwargs):
        return cp.power(cp.abs(z[:-1]), 1.5) @ self._multiplier


class BorrowCost(cvx.HoldingCost):
    """Borrow fee on short positions, annualised percentage ``short_fee``."""

    def __init__(self, short_fee: float):
        super().__init__(short_fees=short_fee)


@dataclass(frozen=True)
class CostModel:
    """Parameters of the transaction and holding cost model.

    Parameters
    ----------
    half_spread
        Half the bid-ask spread, as a fraction of the traded value (0.002 = 20 bps).
    impact
        Coefficient ``b`` of the 1.5-power market-impact term (0 disables it,
        which is reported, never implicit).
    sigma_span, volume_span
        Spans (periods) of the exponentially weighted volatility and volume
        estimates.
    short_fee
        Annualised borrow fee on short positions, in percent (cvxportfolio's
        convention); 0 disables the holding cost.
    """

    half_spread: float = 0.002
    impact: float = 1.0
    sigma_span: float = 10.0
    volume_span: float = 10.0
    short_fee: float = 0.0

    def __post_init__(self) -> None:
        for name in ("half_spread", "impact", "short_fee"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 0):
                raise SpecError(f"costs.{name} must be a finite number >= 0, got {name}={value!r}.")
        for name in ("sigma_span", "volume_span"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 1):
                raise SpecError(f"costs.{name} must be >= 1 period, got {name}={value!r}.")

    @property
    def min_history(self) -> int:
        """Periods of history before the EWM volatility/volume estimates are meaningful."""
        return int(np.ceil(max(self.sigma_span, self.volume_span))) + 2

    # fresh objects every call: cvxportfolio estimators hold per-backtest state
    def spread(self) -> SpreadCost | None:
        return SpreadCost(self.half_spread) if self.half_spread > 0 else None

    def impact_cost(self) -> ImpactCost | None:
        if self.impact <= 0:
            return None
        return ImpactCost(self.impact, self.sigma_span, self.volume_span)

    def holding(self) -> BorrowCost | None:
        return BorrowCost(self.short_fee) if self.short_fee > 0 else None

    def trading_terms(self) -> list:
        """The transaction-cost terms of the objective (spread, impact)."""
        return [c for c in (self.spread(), self.impact_cost()) if c is not None]

    def holding_terms(self) -> list:
        """The holding-cost terms of the objective (borrow fee)."""
        return [c for c in (self.holding(),) if c is not None]

    def simulator_costs(self) -> list:
        """Cost objects for :class:`cvxportfolio.MarketSimulator`."""
        return self.trading_terms() + self.holding_terms()
