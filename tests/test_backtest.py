"""Backtests: cost accounting, no look-ahead, window checks, saved results."""

from __future__ import annotations

import json
import tomllib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mpo.backtest import reconcile_costs, run_backtests
from mpo.config import load_spec
from mpo.data.market import MarketData
from mpo.errors import DataError, InfeasibleError, SpecError

#: Backtest policy specs (training specs such as dmpo.toml have a [train] table, no kind);
#: learned ones need a trained checkpoint and are tested in test_learned.py.
SHIPPED = sorted(
    p
    for p in Path(__file__).parents[1].joinpath("policies").glob("*.toml")
    if not tomllib.loads(p.read_text()).get("kind", "dmpo").startswith("dmpo")
)


@pytest.fixture(scope="module")
def small_run(market, make_spec):
    costs = {"half_spread": 0.0005, "impact": 1.0, "short_fee": 3.0}
    specs = [
        make_spec("equal_weight", rebalance_every=5, costs=costs),
        make_spec("spo", constraints={"turnover": 0.3}, costs=costs),
        make_spec("mpo", costs=costs, constraints={"long_only": False}),
    ]
    return run_backtests(
        specs, market, start=market.calendar[100], end=market.calendar[160], progress=False
    )


def test_costs_reconcile_every_period(small_run):
    for name, result in small_run.results.items():
        gap = reconcile_costs(result)
        assert len(gap) == 60
        np.testing.assert_allclose(gap.to_numpy(), 0.0, atol=1e-10, err_msg=name)


def test_hold_pays_no_cost_and_others_do(small_run):
    hold = small_run.results["hold"]
    assert (hold.costs.to_numpy() == 0).all()
    assert (hold.turnover == 0).all()
    np.testing.assert_allclose(hold.returns, hold.gross_returns, atol=1e-15)
    for name in ("equal_weight", "spo", "mpo"):
        costs = small_run.results[name].costs
        assert costs["spread"].sum() > 0 and costs["impact"].sum() > 0, name
    mpo = small_run.results["mpo"]
    shorts = (mpo.weights.iloc[:, :-1] < -1e-6).any(axis=1)
    assert (mpo.costs["holding"][shorts] > 0).all()
    assert (mpo.costs["holding"][~shorts] < 1e-3).all()


def test_constraints_hold_in_backtest(small_run):
    w = small_run.results["spo"].weights
    assert (w.iloc[:, :-1] >= -1e-7).all().all()
    assert (w.iloc[:, :-1] <= 0.3 + 1e-7).all().all()
    turnover = small_run.results["spo"].turnover
    assert (turnover.iloc[1:] <= 0.3 + 1e-7).all()


def test_metrics_table_has_hold_reference(small_run):
    table = small_run.table()
    assert list(table.index) == ["hold", "equal_weight", "spo", "mpo"]
    assert np.isnan(table.loc["hold", "sharpe_vs_hold"])
    for name in ("spo", "mpo"):
        row = table.loc[name]
        assert (
            row["sharpe_vs_hold_ci_low"] <= row["sharpe_vs_hold"] <= row["sharpe_vs_hold_ci_high"]
        )
        assert row["sharpe_ci_low"] <= row["sharpe"] <= row["sharpe_ci_high"]


def test_run_is_saved_with_provenance(small_run, tmp_path):
    out = small_run.save(tmp_path / "run")
    meta = json.loads((out / "run.json").read_text())
    assert meta["data"]["fingerprint"] == small_run.market.fingerprint()
    assert "cvxportfolio" in meta["versions"] and "spo" in meta["specs"]
    rets = pd.read_parquet(out / "spo" / "returns.parquet")
    np.testing.assert_allclose(rets["net_return"], small_run.results["spo"].returns)
    assert not list(out.rglob("*.tmp"))


def _perturb_after(market: MarketData, t_star: pd.Timestamp, seed: int = 7) -> MarketData:
    """Replace everything a decision at t_star cannot know: r_t and V_t for t >= t_star, p_t > t_star."""
    rng = np.random.default_rng(seed)
    r = market.returns.copy()
    late = r.index >= t_star
    r.loc[late] = rng.normal(0.0, 0.05, size=(late.sum(), r.shape[1]))
    prices = None
    if market.prices is not None:
        prices = market.prices.copy()
        after = prices.index > t_star
        prices.loc[after] = prices.loc[after] * rng.uniform(
            0.5, 1.5, size=(after.sum(), r.shape[1])
        )
    vols = None
    if market.volumes is not None:
        vols = market.volumes.copy()
        vols.loc[late] = vols.loc[late] * rng.uniform(0.1, 10, size=(late.sum(), r.shape[1]))
    cash = market.cash_return.copy()
    cash.loc[late] = 0.01
    return replace(market, returns=r, prices=prices, volumes=vols, cash_return=cash)


def _assert_same_decisions_until(run_a, run_b, t_star):
    for name, a in run_a.results.items():
        b = run_b.results[name]
        wa, wb = a.weights.loc[:t_star], b.weights.loc[:t_star]
        assert len(wa) > 3
        np.testing.assert_array_equal(wa.to_numpy(), wb.to_numpy(), err_msg=name)
        later_a, later_b = a.weights.loc[t_star:].iloc[2:], b.weights.loc[t_star:].iloc[2:]
        if name != "hold":
            assert not np.allclose(later_a.to_numpy(), later_b.to_numpy()), (
                f"{name}: perturbing the future should change later decisions (test is vacuous)"
            )


def test_no_lookahead_shipped_policies(sp_prices):
    """Every shipped spec, as shipped (sp20, its lookbacks), over a short window."""
    specs = [load_spec(p) for p in SHIPPED]
    assert {s.kind for s in specs} >= {"hold", "equal_weight", "spo", "mpo"}
    ref = specs[0]
    market = MarketData.from_prices(sp_prices.loc[ref.data.start :], adv=ref.data.adv, name="sp20")
    start = pd.Timestamp(ref.backtest.start)
    end = market.calendar[market.calendar.searchsorted(start) + 30]
    t_star = market.calendar[market.calendar.searchsorted(start) + 15]
    run_a = run_backtests(specs, market, start=start, end=end, progress=False)
    run_b = run_backtests(
        specs, _perturb_after(market, t_star), start=start, end=end, progress=False
    )
    _assert_same_decisions_until(run_a, run_b, t_star)


def test_no_lookahead_with_volumes_and_regression(market, make_spec):
    """Observed volumes and the per-step regression forecaster do not peek either."""
    specs = [
        make_spec("mpo", forecast={"kind": "linear_regression", "lookback": 60}),
        make_spec(
            "spo",
            name="spo_factor",
            forecast={"kind": "ewma_mean", "halflife": 20},
            risk={"kind": "factor", "factors": 2},
        ),
        make_spec("equal_weight", rebalance_every=3),
    ]
    start, end = market.calendar[120], market.calendar[150]
    t_star = market.calendar[135]
    run_a = run_backtests(specs, market, start=start, end=end, progress=False)
    run_b = run_backtests(
        specs, _perturb_after(market, t_star), start=start, end=end, progress=False
    )
    _assert_same_decisions_until(run_a, run_b, t_star)


def test_start_without_enough_history_is_rejected(market, make_spec):
    with pytest.raises(
        DataError, match=r"leaves 20 periods of history but policy .spo. needs 61"
    ) as info:
        run_backtests([make_spec("spo")], market, start=market.calendar[20], progress=False)
    assert "earliest possible start" in str(info.value)


def test_window_too_short_is_rejected(market, make_spec):
    with pytest.raises(DataError, match="fewer than 3 periods"):
        run_backtests([make_spec("spo")], market, start=market.calendar[-2], progress=False)


def test_policies_must_share_market_sections(market, make_spec):
    a = make_spec("spo")
    b = make_spec("mpo", costs={"half_spread": 0.001})
    with pytest.raises(SpecError, match=r"differ in \[costs\]"):
        run_backtests([a, b], market, progress=False)
    with pytest.raises(SpecError, match="unique"):
        run_backtests([a, make_spec("spo")], market, progress=False)


def test_infeasible_constraints_get_specific_error(market, make_spec):
    from mpo.errors import InfeasibleError

    spec = make_spec("spo", constraints={"min_weight": 0.2, "max_weight": 0.3})  # 8 * 0.2 > 1
    with pytest.raises(InfeasibleError, match="spo"):
        run_backtests(
            [spec], market, start=market.calendar[100], end=market.calendar[105], progress=False
        )


def test_a_failing_policy_is_recorded_and_the_others_run(market, make_spec):
    """A bankrupt or infeasible policy fails alone: its reason is recorded, the rest is saved."""
    ok = make_spec("spo", name="ok")
    bad = make_spec(
        "spo", name="bad", constraints={"min_weight": 0.2, "max_weight": 0.3, "leverage": 1.0}
    )  # 8 assets x 0.2 > leverage 1: infeasible
    window = dict(start=market.calendar[100], end=market.calendar[110], progress=False)
    with pytest.raises(InfeasibleError, match="policy 'bad' at"):
        run_backtests([ok, bad], market, **window)
    run = run_backtests([ok, bad], market, on_failure="record", **window)
    assert set(run.results) == {"hold", "ok"}
    assert "policy 'bad' at" in run.failures["bad"]


def test_unknown_solver_is_a_spec_error(make_spec):
    with pytest.raises(SpecError, match="not installed; installed solvers"):
        make_spec("spo", backtest={"solver": "NOPE"})
