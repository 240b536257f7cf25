"""A fixed fee per traded name: charged exactly by the simulator, approximated by the policy."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpo.backtest import reconcile_costs, run_backtests
from mpo.costs.fixed import apply_deadband
from mpo.errors import SpecError

FEE = 25.0


@pytest.fixture(scope="module")
def runs(market, make_spec):
    cal = market.calendar
    window = dict(start=cal[100], end=cal[140], progress=False)
    blind = make_spec("spo", name="blind", costs={"fixed": {"fee": FEE}})
    aware = make_spec(
        "spo", name="aware",
        costs={"fixed": {"fee": FEE, "amortize": 0.005, "deadband": 2000.0}},
    )  # fmt: skip
    return run_backtests([blind, aware], market, **window)


def _traded(r, min_trade=1.0):
    dollars = r.trades[r.weights.columns[:-1]].mul(r.value.reindex(r.trades.index), axis=0)
    return (dollars.abs() > min_trade).sum(axis=1)


def test_the_fee_is_charged_exactly_per_traded_name(runs):
    for name in ("blind", "aware"):
        r = runs.results[name]
        expected = FEE * _traded(r)
        np.testing.assert_allclose(r.costs["fixed"].to_numpy(), expected.to_numpy(), atol=1e-9)
        np.testing.assert_allclose(reconcile_costs(r).to_numpy(), 0.0, atol=1e-10)
    assert runs.results["blind"].costs["fixed"].sum() > 0
    assert (runs.results["hold"].costs["fixed"] == 0).all()


def test_the_approximation_trades_fewer_names_and_pays_less(runs):
    blind, aware = runs.results["blind"], runs.results["aware"]
    assert _traded(aware).sum() < 0.5 * _traded(blind).sum()
    assert aware.costs["fixed"].sum() < 0.5 * blind.costs["fixed"].sum()
    # every trade the aware policy makes is at least the deadband (or none)
    dollars = aware.trades[aware.weights.columns[:-1]].mul(aware.value, axis=0).abs()
    made = dollars.to_numpy()[dollars.to_numpy() > 1.0]
    assert (made >= 2000.0 - 1e-6).all()


def test_the_deadband_cancels_small_trades_and_keeps_the_budget():
    current = pd.Series([0.3, 0.3, 0.3, 0.1], index=["A", "B", "C", "cash"])
    target = pd.Series([0.301, 0.25, 0.35, 0.099], index=current.index)
    out = apply_deadband(target, current, value=1e6, deadband=5000.0)
    assert out["A"] == 0.3  # a $1,000 trade: cancelled
    assert out["B"] == 0.25 and out["C"] == 0.35  # $50,000 trades: kept
    assert out.sum() == pytest.approx(1.0, abs=1e-15)
    assert out["cash"] == pytest.approx(0.1, abs=1e-15)


def test_a_fixed_fee_cannot_be_trained_on(make_spec):
    from mpo.policies import cost_model

    model = cost_model(make_spec("spo", costs={"fixed": {"fee": 1.0}}))
    with pytest.raises(SpecError, match="fixed"):
        model.check_trainable()
