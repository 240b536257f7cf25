"""The cost model, term by term, against hand computations."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpo.costs import CostModel, ImpactCost, ewm_last
from mpo.errors import SpecError


def _simulate(cost, market, t_pos: int, u: np.ndarray, v: float, t_next_pos: int | None = None):
    """Call a simulator cost the way cvxportfolio's MarketSimulator does."""
    rets = market.returns_with_cash()
    vols = market.dollar_volumes
    t = market.calendar[t_pos]
    universe = rets.columns
    cost.initialize_estimator_recursive(universe=universe, trading_calendar=market.calendar)
    h = pd.Series(v / (len(universe) - 1), index=universe)
    h.iloc[-1] = 0.0
    u_s = pd.Series(np.append(u, -u.sum()), index=universe)
    kwargs = dict(
        t=t,
        t_next=market.calendar[t_next_pos or t_pos + 1],
        u=u_s,
        h_plus=h + u_s,
        past_returns=rets.iloc[:t_pos],
        past_volumes=vols.iloc[:t_pos],
        current_returns=rets.iloc[t_pos],
        current_volumes=vols.iloc[t_pos],
        current_prices=market.prices.iloc[t_pos],
        current_weights=h / v,
        current_portfolio_value=v,
    )
    return cost.simulate_recursive(**kwargs)


def test_ewm_last_matches_pandas():
    x = pd.DataFrame(np.random.default_rng(1).normal(size=(40, 3)))
    np.testing.assert_allclose(ewm_last(x, 10, "mean"), x.ewm(span=10).mean().iloc[-1], atol=1e-15)
    np.testing.assert_allclose(ewm_last(x, 10, "std"), x.ewm(span=10).std().iloc[-1], atol=1e-15)
    long = pd.DataFrame(np.random.default_rng(2).normal(size=(500, 3)))
    np.testing.assert_allclose(
        ewm_last(long, 10, "std"), long.ewm(span=10).std().iloc[-1], rtol=1e-7
    )


def test_spread_cost_is_half_spread_times_traded_dollars(market):
    model = CostModel(half_spread=0.0007, impact=0.0)
    (spread,) = model.trading_terms()
    u = np.linspace(-3e4, 5e4, market.n_assets)
    cost = _simulate(spread, market, 200, u, v=1e6)
    assert cost == pytest.approx(0.0007 * np.abs(u).sum(), rel=1e-12)


def test_impact_cost_hand_computation(market):
    model = CostModel(half_spread=0.0, impact=0.8, sigma_span=10, volume_span=12)
    (impact,) = model.trading_terms()
    assert isinstance(impact, ImpactCost)
    t_pos, v = 150, 2.5e6
    u = np.linspace(-2e5, 1e5, market.n_assets)
    cost = _simulate(impact, market, t_pos, u, v=v)
    # hand computation: b * sigma * |u|^1.5 / sqrt(V), estimates from data strictly before t
    past_r = market.returns.iloc[:t_pos]
    past_v = market.dollar_volumes.iloc[:t_pos]
    sigma = past_r.ewm(span=10).std().iloc[-1].to_numpy()
    volume = past_v.ewm(span=12).mean().iloc[-1].to_numpy()
    expected = np.sum(0.8 * sigma * np.abs(u) ** 1.5 / np.sqrt(volume))
    assert cost == pytest.approx(expected, rel=1e-6)


def test_borrow_cost_charges_shorts_only(market):
    model = CostModel(half_spread=0.0, impact=0.0, short_fee=5.0)
    (borrow,) = model.holding_terms()
    t_pos, v = 120, 1e6
    n = market.n_assets
    u = np.zeros(n)
    u[0] = -v / n - 2e5  # position 0 becomes a short of 2e5 dollars
    cost = _simulate(borrow, market, t_pos, u, v=v)
    dt = market.calendar[t_pos + 1] - market.calendar[t_pos]
    per_period = (1 + 5.0 / 100) ** (dt / pd.Timedelta("365.24D")) - 1
    assert cost == pytest.approx(2e5 * per_period, rel=1e-10)


def test_no_trade_no_cost(market):
    model = CostModel(half_spread=0.002, impact=1.0)
    zero = np.zeros(market.n_assets)
    assert sum(_simulate(c, market, 50, zero, v=1e6) for c in model.trading_terms()) == 0.0


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"half_spread": -0.001}, "half_spread"),
        ({"impact": float("nan")}, "impact"),
        ({"sigma_span": 0.5}, "sigma_span"),
        ({"short_fee": -1.0}, "short_fee"),
    ],
)
def test_cost_model_rejects_bad_parameters(kwargs, field):
    with pytest.raises(SpecError, match=field):
        CostModel(**kwargs)


def test_zero_coefficients_drop_terms_explicitly():
    assert CostModel(half_spread=0.0, impact=0.0).simulator_costs() == []
    assert [type(c).__name__ for c in CostModel().simulator_costs()] == ["spread", "impact"]
