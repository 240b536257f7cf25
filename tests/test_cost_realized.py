"""What the simulator charges: realised volume and volatility (default) or the planner's estimates."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpo.backtest import reconcile_costs, run_backtests
from mpo.costs import CostEstimates, CostModel, ewm_last


def test_realized_and_estimate_modes_charge_their_definitions(market, make_spec):
    """Impact charged per period equals b sigma |z|^1.5 sqrt(v/V) with each mode's sigma, V."""
    window = dict(start=market.calendar[100], end=market.calendar[130], progress=False)
    rets = market.returns_with_cash()
    vols = market.dollar_volumes
    for mode in ("realized", "estimates"):
        spec = make_spec("spo", costs={"half_spread": 0.0, "impact": 0.7, "simulator": mode})
        res = run_backtests([spec], market, **window).results["spo"]
        np.testing.assert_allclose(reconcile_costs(res).to_numpy(), 0.0, atol=1e-10)
        for t in res.returns.index[1:6]:
            pos = market.calendar.get_loc(t)
            v = res.value.loc[t]
            z = np.abs(res.trades.loc[t].to_numpy()[:-1])
            if mode == "realized":
                sigma = rets.iloc[: pos + 1, :-1].ewm(span=10).std().iloc[-1].to_numpy()
                volume = vols.iloc[pos].to_numpy()
            else:
                sigma = rets.iloc[:pos, :-1].ewm(span=10).std().iloc[-1].to_numpy()
                volume = vols.iloc[:pos].ewm(span=10).mean().iloc[-1].to_numpy()
            expected = (0.7 * sigma / np.sqrt(volume / v) * z**1.5).sum() * v
            assert res.costs.loc[t, "impact"] == pytest.approx(expected, rel=1e-7), (mode, t)


def test_planner_never_sees_the_period_it_trades(market):
    """The planner's sigma at t uses returns before t only; the realised one includes t."""
    est = CostEstimates(simulator="realized")
    rets = market.returns_with_cash()
    pos = 150
    past, now = rets.iloc[:pos], rets.iloc[pos]
    planner = est.planner_sigma(rets.index[pos], past)
    realized = est.simulator_sigma(rets.index[pos], past, now)
    np.testing.assert_allclose(planner, ewm_last(past.iloc[:, :-1], 10, "std"), rtol=1e-12)
    bumped = now.copy()
    bumped.iloc[0] += 0.5
    assert est.simulator_sigma(rets.index[pos], past, bumped)[0] != pytest.approx(realized[0])
    np.testing.assert_allclose(est.planner_sigma(rets.index[pos], past), planner)


def test_cost_model_enumerates_registered_terms():
    model = CostModel(half_spread=0.001, impact=0.0, short_fee=2.0)
    assert model.names() == ["spread", "impact", "holding", "fixed"]
    assert [t.name for t in model.active()] == ["spread", "holding"]
    assert [m for m, _ in model.planner_terms()] == ["gamma_trade", "gamma_hold"]
    assert isinstance(pd.Series(model.names()), pd.Series)
