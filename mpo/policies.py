"""Build cvxportfolio policies from :class:`mpo.config.PolicySpec` objects.

The CLI, scripts, tuning and tests all go through :func:`build_policy`, so a
policy is data (a spec) until it is built here.

Optimisation policies maximise (Boyd et al. 2017, eq. 4.3 / 5.1)::

    r_hat' w+  -  gamma_risk * psi(w+)  -  gamma_trade * phi_trade(z)  -  gamma_hold * phi_hold(w+)

summed over the planning horizon for MPO, subject to the hard constraints,
where ``phi_trade`` is the same :class:`mpo.costs.CostModel` the simulator
charges.
"""

from __future__ import annotations

import logging

import cvxportfolio as cvx
import numpy as np
import pandas as pd

from mpo.config import PolicySpec
from mpo.costs import CostModel
from mpo.forecast import (
    EwmaMeanForecast,
    LinearRegressionForecast,
    RollingCovariance,
    RollingMeanForecast,
)

__all__ = [
    "build_policy",
    "cost_model",
    "forecaster",
    "learned_views",
    "required_history",
    "risk_model",
]

logger = logging.getLogger(__name__)

#: Universe size from which cvxpy's DPP compilation is skipped (it exhausts memory).
IGNORE_DPP_FROM = 200


def cost_model(spec: PolicySpec) -> CostModel:
    """The cost model a spec describes (shared by simulator and optimiser)."""
    c = spec.costs
    return CostModel(
        half_spread=c.half_spread,
        impact=c.impact,
        sigma_span=c.sigma_span,
        volume_span=c.volume_span,
        short_fee=c.short_fee,
    )


def learned_views(spec: PolicySpec):
    """The :class:`~mpo.forecast.learned.LearnedViews` of a ``dmpo_*`` spec."""
    from mpo.forecast.learned import LearnedViews

    views = LearnedViews(spec.learned.checkpoint)
    if spec.kind == "dmpo_mpo":
        views.check_horizon(spec.objective.planning_horizon, spec.name)
    return views


def forecaster(spec: PolicySpec, views=None):
    """The returns forecaster of an optimisation spec."""
    if spec.kind == "dmpo_mpo":
        from mpo.forecast.learned import LearnedReturnsForecast

        return LearnedReturnsForecast(views or learned_views(spec))
    f = spec.forecast
    if f.kind == "rolling_mean":
        return RollingMeanForecast(f.lookback)
    if f.kind == "ewma_mean":
        return EwmaMeanForecast(f.halflife)
    return LinearRegressionForecast(f.lookback, ridge=f.ridge)


def risk_model(spec: PolicySpec, views=None):
    """The risk term of an optimisation spec."""
    if spec.kind == "dmpo_mpo":
        from mpo.forecast.learned import LearnedCovariance

        return cvx.FullCovariance(Sigma=LearnedCovariance(views or learned_views(spec)))
    sigma = RollingCovariance(spec.risk.lookback)
    if spec.risk.kind == "full":
        return cvx.FullCovariance(Sigma=sigma)
    return cvx.FactorModelCovariance(num_factors=spec.risk.factors, Sigma=sigma)


def required_history(spec: PolicySpec) -> int:
    """Periods of data needed before the first decision of this spec."""
    need = cost_model(spec).min_history
    if spec.kind.startswith("dmpo"):
        return max(need, learned_views(spec).history())
    if spec.kind in ("spo", "mpo"):
        f = forecaster(spec)
        need = max(need, f.history() + spec.objective.planning_horizon, spec.risk.lookback)
    return need


def _constraints(spec: PolicySpec) -> list:
    c = spec.constraints
    out: list = []
    if c.long_only:
        out.append(cvx.LongOnly(applies_to_cash=False))
    if c.min_weight is not None:
        out.append(cvx.MinWeights(c.min_weight))
    if c.max_weight is not None:
        out.append(cvx.MaxWeights(c.max_weight))
    if c.leverage is not None:
        out.append(cvx.LeverageLimit(c.leverage))
    if c.turnover is not None:
        out.append(cvx.TurnoverLimit(c.turnover))
    if c.fully_invested:
        out.append(cvx.NoCash())
    return out


def _objective(spec: PolicySpec, views=None):
    o = spec.objective
    costs = cost_model(spec)
    objective = cvx.ReturnsForecast(r_hat=forecaster(spec, views)) - o.gamma_risk * risk_model(
        spec, views
    )
    for term in costs.trading_terms():
        objective = objective - o.gamma_trade * term
    for term in costs.holding_terms():
        objective = objective - o.gamma_hold * term
    return objective


def build_policy(
    spec: PolicySpec,
    universe: list[str],
    trading_calendar: pd.DatetimeIndex | None = None,
):
    """Turn a spec into a cvxportfolio policy for the given universe.

    Parameters
    ----------
    spec
        Validated policy spec.
    universe
        Tickers (without cash), used for the equal-weight target.
    trading_calendar
        Backtest dates; needed by ``equal_weight`` for its rebalancing dates.
    """
    if spec.kind == "hold":
        return cvx.Hold()
    if spec.kind == "equal_weight":
        if trading_calendar is None:
            raise ValueError("equal_weight needs the backtest's trading calendar.")
        target = pd.Series(1.0 / len(universe), index=list(universe))
        return _EqualWeight(target, trading_calendar[:: spec.rebalance_every])
    views = None
    if spec.kind.startswith("dmpo"):
        views = learned_views(spec)
        views.check_universe(list(universe))
        if spec.kind == "dmpo_qp":
            from mpo.forecast.learned import DMPOQPPolicy

            return DMPOQPPolicy(views, delta=spec.learned.delta)
    n = len(universe)
    kwargs = {"solver": spec.backtest.solver, **spec.backtest.solver_options}
    if n >= IGNORE_DPP_FROM:
        kwargs["ignore_dpp"] = True
    return cvx.MultiPeriodOptimization(
        _objective(spec, views),
        _constraints(spec),
        planning_horizon=spec.objective.planning_horizon,
        fallback_solver=None,
        **kwargs,
    )


class _EqualWeight(cvx.policies.Policy):
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
