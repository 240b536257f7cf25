"""One out-of-sample simulation across all folds: fitted policies take over at fold boundaries.

:class:`SwitchingPolicy` is a cvxportfolio policy holding one policy per fold;
at every date only the fold whose test window holds the date is evaluated. The
simulator, holdings and cost accounting are those of a single backtest, so the
value is continuous across boundaries and the trade at a switch (from the old
fold's portfolio to the new fold's target) pays costs like any other trade.
"""

from __future__ import annotations

import logging

import cvxportfolio as cvx
import pandas as pd

from mpo.backtest import PolicyResult, initial_holdings, make_simulator, simulate
from mpo.config import PolicySpec
from mpo.data.market import MarketData
from mpo.policies import build_policy

__all__ = ["SwitchingPolicy", "stitched_backtest"]

logger = logging.getLogger(__name__)


class SwitchingPolicy(cvx.policies.Policy):
    """Delegate each date to the policy of the fold whose test window starts last on or before it.

    Parameters
    ----------
    starts
        Test-window start of each fold, increasing.
    policies
        One cvxportfolio policy per fold.

    A fold's policy is initialised when its window begins and finalised when
    it ends, so at most one fold's optimisation problem is alive at a time.
    """

    def __init__(self, starts: list[pd.Timestamp], policies: list) -> None:
        if len(starts) != len(policies) or not starts:
            raise ValueError("one policy per fold start is needed.")
        self._starts = pd.DatetimeIndex(starts)
        self._policies = list(policies)  # a list: cvxportfolio does not recurse into it
        self._active: int | None = None
        self._init_kwargs: dict = {}

    def _fold_at(self, t) -> int:
        return max(int(self._starts.searchsorted(t, side="right")) - 1, 0)

    def initialize_estimator_recursive(self, **kwargs) -> None:
        self._init_kwargs = kwargs
        self._active = None
        self._current_value = None

    def finalize_estimator_recursive(self, **kwargs) -> None:
        if self._active is not None:
            self._policies[self._active].finalize_estimator_recursive(**kwargs)
        self._active = None

    def values_in_time_recursive(self, t, **kwargs):
        k = self._fold_at(t)
        if k != self._active:
            if self._active is not None:
                self._policies[self._active].finalize_estimator_recursive()
            logger.debug("fold %d takes over at %s", k, t)
            self._policies[k].initialize_estimator_recursive(**self._init_kwargs)
            self._active = k
        self._current_value = self._policies[k].values_in_time_recursive(t=t, **kwargs)
        return self._current_value


def stitched_backtest(
    name: str,
    fold_specs: list[PolicySpec],
    starts: list[pd.Timestamp],
    market: MarketData,
    end: pd.Timestamp,
    *,
    progress: bool = False,
) -> PolicyResult:
    """Simulate ``fold_specs[k]`` on fold ``k``'s test window, all in one backtest.

    ``market`` must hold the history the first fold's policy needs before
    ``starts[0]``. The first spec's ``[costs]`` and ``[backtest]`` govern the
    simulation (they are the same for every fold). ``end`` is the first date
    not traded (the day after the last test date).
    """
    spec0 = fold_specs[0]
    cal = market.calendar
    trading = cal[(cal >= starts[0]) & (cal < end)]
    policies = [build_policy(s, market.tickers, trading) for s in fold_specs]
    policy = policies[0] if len(policies) == 1 else SwitchingPolicy(starts, policies)
    return simulate(
        policy,
        spec=spec0.with_updates(name=name) if spec0.name != name else spec0,
        market=market,
        simulator=make_simulator(spec0, market),
        start=starts[0],
        end=end,
        h0=initial_holdings(spec0, market.tickers, market.cash_key),
        name=name,
        progress=progress,
    )
