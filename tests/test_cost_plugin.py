"""A new cost term defined in this one file appears everywhere: costs.parquet, tables,
the policy objective and the tuning objective, with no other change (issue 13)."""

from __future__ import annotations

from typing import Annotated

import cvxpy as cp
import numpy as np
import pandas as pd
import pytest
from cvxportfolio.costs import Cost
from pydantic import Field

from mpo.backtest import run_backtests
from mpo.costs import COST_TERMS, CostTerm, SimulatorOnlyCost, TermParams


class _FeeSimulator(SimulatorOnlyCost):
    """``fee`` dollars per traded name (a trade above ``min_trade`` dollars)."""

    def __init__(self, fee: float, min_trade: float):
        self.fee, self.min_trade = fee, min_trade
        super().__init__()

    def simulate(self, t, u, **kwargs):
        return self.fee * float((np.abs(u.to_numpy()[:-1]) > self.min_trade).sum())


class _FeePlanner(Cost):
    """Convex stand-in: the fee spread over a trade of ``typical`` portfolio fraction."""

    def __init__(self, fee: float, typical: float):
        self.fee, self.typical = fee, typical
        self._coef = None

    def initialize_estimator(self, universe, **kwargs):
        self._coef = cp.Parameter(nonneg=True)

    def values_in_time(self, current_portfolio_value, **kwargs):
        self._coef.value = self.fee / (current_portfolio_value * self.typical)

    def compile_to_cvxpy(self, w_plus, z, w_plus_minus_w_bm, **kwargs):
        return self._coef * cp.sum(cp.abs(z[:-1]))


class FixedFee(CostTerm):
    """A fixed fee per traded name."""

    class Params(TermParams):
        fee: Annotated[float, Field(ge=0)] = 0.0
        typical: Annotated[float, Field(gt=0)] = 0.01

    @property
    def enabled(self) -> bool:
        return self.params.fee > 0

    def simulator_term(self):
        return _FeeSimulator(self.params.fee, min_trade=1e-6)

    def planner_term(self):
        return _FeePlanner(self.params.fee, self.params.typical)


@pytest.fixture
def fixed_fee():
    COST_TERMS.register("fixed_fee", FixedFee)
    yield FixedFee
    COST_TERMS.unregister("fixed_fee")


def _window(market):
    return dict(start=market.calendar[100], end=market.calendar[130], progress=False)


def test_fixed_fee_in_costs_parquet_tables_and_objective(market, make_spec, fixed_fee, tmp_path):
    costs = {"half_spread": 0.0005, "impact": 0.0, "fixed_fee": {"fee": 2.0}}
    cheap = make_spec("spo", name="cheap", costs={**costs, "fixed_fee": {"fee": 0.0}})
    # the same spec with the fee on: [costs.fixed_fee] as in a TOML file
    with_fee = make_spec("spo", name="fee", costs=costs)
    assert with_fee.costs.fixed_fee.fee == 2.0
    run = run_backtests([with_fee], market, **_window(market))
    res = run.results["fee"]
    # the simulator charged fee * traded names, recorded under the term's name
    traded = (
        res.trades.iloc[:, :-1].abs() * res.value.reindex(res.trades.index).to_numpy()[:, None]
        > 1e-6
    ).sum(axis=1)
    np.testing.assert_allclose(res.costs["fixed_fee"], 2.0 * traded, rtol=1e-12)
    assert res.costs["fixed_fee"].sum() > 0
    assert "fixed_fee_cost" in run.table().columns
    run.save(tmp_path / "run")
    saved = pd.read_parquet(tmp_path / "run" / "fee" / "costs.parquet")
    assert "fixed_fee" in saved.columns
    from mpo.report import format_table

    assert "fixed_fee/yr" in format_table(run.table())
    # the planner sees the fee: with a large fee the policy trades less
    big = make_spec("spo", name="big", costs={**costs, "fixed_fee": {"fee": 500.0}})
    runs = [run_backtests([s], market, **_window(market)).results[s.name] for s in (cheap, big)]
    assert runs[1].turnover.sum() < 0.5 * runs[0].turnover.sum()


def test_fixed_fee_in_the_tuning_objective(market, make_spec, fixed_fee, tmp_path):
    from mpo.tuning import tune

    spec = make_spec(
        "spo",
        costs={"half_spread": 0.0005, "impact": 0.0, "fixed_fee": {"fee": 2.0}},
        # a low gamma_trade range: both trials trade (high draws hold still and pay nothing)
        tuning={"trials": 2, "prune": False,
                "params": {"gamma_trade": {"low": 0.01, "high": 0.1}}},
    )  # fmt: skip
    cal = market.calendar
    result = tune(
        spec,
        market,
        train=(str(cal[70].date()), str(cal[150].date())),
        test=(str(cal[220].date()), str(cal[260].date())),
        purge=62,
        storage=str(tmp_path / "s.journal"),
        evaluate=False,
        progress=False,
    )
    assert "fixed_fee_cost" in result.trials.columns
    assert (result.trials["fixed_fee_cost"] > 0).all()  # charged in every trial (they trade)
