"""Hold and equal weight: the references every result is reported against."""

from __future__ import annotations

import cvxportfolio as cvx
import numpy as np
import pandas as pd

from mpo.errors import SpecError
from mpo.policies.base import POLICY_KINDS, PolicyKind

__all__ = ["EqualWeightKind", "HoldKind"]


@POLICY_KINDS.register("hold")
class HoldKind(PolicyKind):
    """Hold the initial portfolio; never trade."""

    is_reference = True

    def build(self, universe, trading_calendar):
        return cvx.Hold()


@POLICY_KINDS.register("equal_weight")
class EqualWeightKind(PolicyKind):
    """Rebalance to equal weights every ``rebalance_every`` periods, hold in between."""

    def build(self, universe, trading_calendar):
        if trading_calendar is None:
            raise SpecError("equal_weight needs the backtest's trading calendar.")
        target = pd.Series(1.0 / len(universe), index=list(universe))
        return EqualWeight(target, trading_calendar[:: self.spec.rebalance_every])


class EqualWeight(cvx.policies.Policy):
    """Rebalance to equal weights on the given dates, hold in between."""

    def __init__(self, target: pd.Series, rebalancing_times: pd.DatetimeIndex):
        self.target = target
        self.rebalancing_times = pd.DatetimeIndex(rebalancing_times)

    def values_in_time(self, t, current_weights, **kwargs):
        if t in self.rebalancing_times:
            out = pd.Series(0.0, index=current_weights.index)
            out.loc[self.target.index] = self.target.to_numpy()
            assert np.isclose(out.sum(), 1.0)
            return out
        return current_weights
