"""The cost inputs a dataset carries: what the simulator charges, what a planner knows.

:func:`simulator_cost_inputs` gives the ``sigma`` and ``V`` of the period starting at
each date that cvxportfolio's simulator charges (loss inputs, not features: in
``"realized"`` mode they depend on the period itself); :func:`planner_volumes` the
planner's dollar-volume estimate at each decision (strictly past), for participation
limits and liquidity screens. Both are re-exported by :mod:`mpo.learn.dataset`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mpo.costs.estimates import CostEstimates
from mpo.data.market import MarketData

__all__ = ["planner_volumes", "simulator_cost_inputs"]


def simulator_cost_inputs(
    market: MarketData, dates: pd.DatetimeIndex, estimates: CostEstimates
) -> tuple[np.ndarray, np.ndarray]:
    """``sigma`` and ``V`` ``(D, n)`` the simulator charges for the period starting at each date.

    Calls :meth:`CostEstimates.simulator_sigma` and :meth:`~CostEstimates.simulator_volume`
    with the arguments cvxportfolio's ``MarketSimulator`` hands its costs at ``t``
    (returns with cash before ``t``, the returns of ``t``, volumes before and of ``t``), so
    the loss charges what a backtest charges (tested to 1e-12). In ``"realized"`` mode
    the values of row ``t`` depend on the period ``t`` itself: loss inputs, not features.
    """
    returns = market.returns_with_cash()
    volumes = market.dollar_volumes
    tickers = returns.columns[:-1]
    rows = market.calendar.get_indexer(dates)
    sigma = np.empty((len(dates), len(tickers)))
    volume = np.empty_like(sigma)
    for k, (t, i) in enumerate(zip(dates, rows, strict=True)):
        past_r, past_v = returns.iloc[:i], volumes.iloc[:i]
        sigma[k] = estimates.simulator_sigma(t, past_r, returns.iloc[i])
        volume[k] = estimates.simulator_volume(t, past_v, volumes.iloc[i], tickers)
    return sigma, volume


def planner_volumes(
    market: MarketData, dates: pd.DatetimeIndex, estimates: CostEstimates
) -> np.ndarray:
    """The planner's dollar-volume estimate ``(D, n)`` at each date: what a policy knows
    at the decision (:meth:`CostEstimates.planner_volume` of the volumes before ``t``),
    e.g. for participation limits. Strictly past: unlike :func:`simulator_cost_inputs`."""
    volumes = market.dollar_volumes
    tickers = market.returns.columns
    rows = market.calendar.get_indexer(dates)
    out = np.empty((len(dates), len(tickers)))
    for k, (t, i) in enumerate(zip(dates, rows, strict=True)):
        # no volume seen yet (the first date): no estimate, treated as no volume
        out[k] = estimates.planner_volume(t, volumes.iloc[:i], tickers) if i > 0 else 0.0
    return np.nan_to_num(out, nan=0.0)
