"""Bring your own cvxportfolio objects: ready policies and spec components from Python."""

from __future__ import annotations

import cvxportfolio as cvx
import numpy as np
import pytest

from mpo.backtest import run_backtests
from mpo.errors import SpecError
from mpo.forecast import RollingCovariance, RollingMeanForecast
from mpo.policies import UserPolicy, build_policy


def _window(market):
    return dict(start=market.calendar[100], end=market.calendar[140], progress=False)


def test_bare_cvxportfolio_policy_runs_beside_specs(market, make_spec):
    spo = make_spec("spo", costs={"half_spread": 0.0005, "impact": 0.0})
    ready = build_policy(spo, market.tickers, market.calendar)
    run = run_backtests([spo, UserPolicy("spo-ready", policy=ready)], market, **_window(market))
    a, b = run.results["spo"], run.results["spo-ready"]
    np.testing.assert_allclose(a.weights.to_numpy(), b.weights.to_numpy(), atol=1e-12)
    np.testing.assert_allclose(a.value.to_numpy(), b.value.to_numpy(), rtol=1e-12)
    assert list(run.results) == ["hold", "spo", "spo-ready"]
    # a handwritten cvxportfolio SPO (spread-only cost model) with the same terms
    o = spo.objective
    hand = cvx.SinglePeriodOptimization(
        cvx.ReturnsForecast(r_hat=RollingMeanForecast(60))
        - o.gamma_risk * cvx.FullCovariance(Sigma=RollingCovariance(60))
        - o.gamma_trade * cvx.TransactionCost(a=0.0005, b=None),
        [cvx.LongOnly(applies_to_cash=False), cvx.MaxWeights(0.3), cvx.LeverageLimit(1.0)],
        solver="CLARABEL",
        **spo.backtest.solver_options,
    )
    run2 = run_backtests([spo, hand], market, **_window(market))
    np.testing.assert_allclose(
        run2.results["spo"].weights.to_numpy(),
        run2.results["SinglePeriodOptimization"].weights.to_numpy(),
        atol=1e-8,
    )


def test_spec_with_python_forecast_and_risk_objects(market, make_spec):
    spo = make_spec("spo")
    same = UserPolicy(
        "spo-objects",
        spec=spo,
        forecast=cvx.ReturnsForecast(r_hat=RollingMeanForecast(60)),
        risk=cvx.FullCovariance(Sigma=RollingCovariance(60)),
        history=62,
    )
    run = run_backtests([spo, same], market, **_window(market))
    np.testing.assert_allclose(
        run.results["spo"].weights.to_numpy(),
        run.results["spo-objects"].weights.to_numpy(),
        atol=1e-10,
    )
    # the spec's costs (spread and impact) are charged to the user policy too
    assert run.results["spo-objects"].costs["impact"].sum() > 0


def test_user_policy_errors(make_spec):
    with pytest.raises(SpecError, match="either policy="):
        UserPolicy("x")
    with pytest.raises(SpecError, match="already has its own"):
        UserPolicy("x", policy=cvx.Hold(), forecast=1)
    with pytest.raises(SpecError, match="optimisation spec"):
        UserPolicy("x", spec=make_spec("equal_weight"), forecast=1).kind(make_spec("equal_weight"))
    with pytest.raises(SpecError, match="cannot backtest"):
        run_backtests([make_spec("spo"), 42], None)
