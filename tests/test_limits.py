"""The risk manager's limits: group exposure, participation rate, liquidity screen (issue 17)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from spec_helpers import spec_dict

from mpo.backtest import run_backtests
from mpo.config import parse_spec
from mpo.errors import DataError, SpecError
from mpo.policies.limits import group_table

SECTORS = {
    "AAPL": "Information Technology",
    "MSFT": "Information Technology",
    "JNJ": "Health Care",
    "JPM": "Financials",
    "KO": "Consumer Staples",
    "PG": "Consumer Staples",
    "WMT": "Consumer Staples",
    "XOM": "Energy",
}
TOL = 1e-8


@pytest.fixture(scope="module")
def sectors(tmp_path_factory):
    path = tmp_path_factory.mktemp("groups") / "sectors.csv"
    pd.DataFrame({"ticker": list(SECTORS), "sector": list(SECTORS.values()), "other": "x"}).to_csv(
        path, index=False
    )
    return path


def _limits(sectors, **extra):
    return {
        "groups": str(sectors),
        "group_column": "sector",
        "group_max": 0.3,
        "group_bounds": {"Energy": {"max": 0.05}, "Information Technology": {"min": 0.15}},
        "participation": 0.002,
        "max_weight": 0.5,
        **extra,
    }


def _planner_adv(market, t, span=10.0):
    """The planner's ADV estimate at t, independently: pandas' EWM mean of volumes before t."""
    past = market.volumes.loc[market.volumes.index < t]
    return past.ewm(span=span, adjust=True).mean().iloc[-1]


def _check_decisions(r, market, limit_groups=True, participation=0.002):
    w = r.weights[market.tickers]
    sectors = pd.Series(SECTORS)[market.tickers]
    net = w.T.groupby(sectors).sum().T
    if limit_groups:
        bound = pd.Series(0.3, index=net.columns)
        bound["Energy"] = 0.05
        assert (net <= bound + TOL).all().all(), (net - bound).max()
        assert (net["Information Technology"] >= 0.15 - TOL).all()
    value = r.value.reindex(r.returns.index)
    for t in r.returns.index:
        adv = _planner_adv(market, t)
        traded = (r.trades.loc[t, market.tickers].abs() * value.loc[t]).to_numpy()
        assert (traded <= participation * adv.to_numpy() * (1 + 1e-9) + TOL * value.loc[t]).all(), t
    return net


@pytest.mark.parametrize("kind", ["spo", "mpo"])
def test_group_and_participation_limits_hold_at_every_decision(market, sectors, kind):
    cal = market.calendar
    free = parse_spec(spec_dict(kind, name="free", constraints={"max_weight": 0.5}))
    limited = parse_spec(spec_dict(kind, name="limited", constraints=_limits(sectors)))
    run = run_backtests([free, limited], market, start=cal[100], end=cal[120], progress=False)
    _check_decisions(run.results["limited"], market)
    # the limits bind: without them the same policy breaks them (groups and trade sizes)
    free = run.results["free"]
    free_net = free.weights[market.tickers].T.groupby(pd.Series(SECTORS)).sum().T
    assert (free_net.max() > 0.3 + 1e-3).any() or free_net["Energy"].max() > 0.05 + 1e-3
    assert free.turnover.sum() > run.results["limited"].turnover.sum() + 1e-3


def test_dmpo_mpo_meets_the_same_limits(market, sectors, tmp_path):
    from test_learned import _write

    ckpt = _write(tmp_path / "dmpo.pt", market.tickers)
    spec = parse_spec(
        spec_dict(
            "dmpo_mpo",
            learned={"checkpoint": str(ckpt)},
            objective={"planning_horizon": 2},
            constraints=_limits(sectors),
        )
    )
    run = run_backtests([spec], market, start="2017-06-01", end="2017-06-20", progress=False)
    _check_decisions(run.results["dmpo_mpo"], market)


def test_the_liquidity_screen_only_lets_illiquid_names_shrink(market, make_spec):
    cal = market.calendar
    t0 = cal[100]
    adv = _planner_adv(market, t0)
    threshold = float(adv.median())  # about half the names are screened at the start
    spec = make_spec("spo", constraints={"min_adv": threshold, "max_weight": 0.6})
    r = run_backtests([spec], market, start=t0, end=cal[115], progress=False).results["spo"]
    screened = 0
    for t in r.returns.index:
        illiquid = _planner_adv(market, t) < threshold
        post = r.weights.loc[t, market.tickers]
        pre = post - r.trades.loc[t, market.tickers]  # the simulator's pre-trade weights
        assert (post[illiquid] <= pre[illiquid].clip(lower=0) + TOL).all(), t
        assert (post[illiquid] >= -TOL).all()
        screened += int(illiquid.sum())
    assert screened > 0


def test_group_tables_are_checked(tmp_path, make_spec):
    bad = tmp_path / "g.csv"
    bad.write_text("ticker,sector\nAAPL,Tech\n")
    with pytest.raises(DataError, match=r"no sector for \['MSFT'\]"):
        group_table(bad, ["AAPL", "MSFT"])
    bad.write_text("ticker,sector,industry\nAAPL,Tech,HW\n")
    with pytest.raises(DataError, match="several group columns"):
        group_table(bad, ["AAPL"])
    bad.write_text("ticker,sector\nAAPL,Tech\nAAPL,Tech\n")
    with pytest.raises(DataError, match="more than once"):
        group_table(bad, ["AAPL"])
    with pytest.raises(DataError, match="does not exist"):
        group_table(tmp_path / "nope.csv", ["AAPL"])
    shipped = group_table("data/sectors/sp20.csv", ["AAPL", "XOM"], "sector")
    assert shipped.to_dict() == {"AAPL": "Information Technology", "XOM": "Energy"}
    with pytest.raises(SpecError, match="group_max need groups"):
        make_spec("spo", constraints={"group_max": 0.3})
    with pytest.raises(SpecError, match="min must be <= max"):
        make_spec("spo", constraints={"groups": str(bad), "group_min": 0.5, "group_max": 0.3})


def test_unknown_group_override_and_dmpo_qp_are_refused(market, sectors, tmp_path):
    spec = parse_spec(
        spec_dict("spo", constraints={"groups": str(sectors), "group_column": "sector",
                                      "group_bounds": {"Utilities": {"max": 0.1}}})
    )  # fmt: skip
    with pytest.raises(SpecError, match=r"names group\(s\) \['Utilities'\]"):
        run_backtests([spec], market, start=market.calendar[100], end=market.calendar[103],
                      progress=False)  # fmt: skip
    with pytest.raises(SpecError, match="kind='dmpo_qp'.*cannot enforce.*groups"):
        parse_spec(
            spec_dict("dmpo_qp", learned={"checkpoint": str(tmp_path / "x.pt")},
                      constraints={"groups": str(sectors), "group_column": "sector"})
        )  # fmt: skip


def test_dmpo_qp_meets_participation_and_liquidity_limits(market, tmp_path):
    """The trained QP layer's own decision, with the participation box and the liquidity
    screen as per-weight bounds: every trade within p * ADV, screened names only shrink."""
    from test_learned import _write

    ckpt = _write(tmp_path / "dmpo.pt", market.tickers)
    cal = market.calendar
    start = pd.Timestamp("2017-06-01")
    threshold = float(_planner_adv(market, start).median())
    limits = {"participation": 0.002, "min_adv": threshold}
    specs = [
        parse_spec(spec_dict("dmpo_qp", name=name, learned={"checkpoint": str(ckpt)},
                             constraints=c))  # fmt: skip
        for name, c in (("free", {}), ("limited", limits))
    ]
    run = run_backtests(specs, market, start=start, end="2017-06-20", progress=False)
    r = run.results["limited"]
    _check_decisions(r, market, limit_groups=False, participation=0.002)
    screened = 0
    for t in r.returns.index:
        illiquid = _planner_adv(market, t) < threshold
        post = r.weights.loc[t, market.tickers]
        pre = post - r.trades.loc[t, market.tickers]
        assert (post[illiquid] <= pre[illiquid].clip(lower=0) + TOL).all(), t
        screened += int(illiquid.sum())
    assert screened > 0
    assert run.results["free"].turnover.sum() > r.turnover.sum() + 1e-3  # the limits bind
    assert cal[0] < start


@pytest.mark.parametrize("t_pos, seed", [(80, 0), (200, 1)])
def test_limits_agree_with_a_hand_written_problem(market, sectors, t_pos, seed):
    """One SPO decision under group and participation limits equals an independent cvxpy one."""
    import cvxpy as cp
    from test_policies import _execute, _impact_mult, _state

    spec = parse_spec(
        spec_dict("spo", constraints={"groups": str(sectors), "group_column": "sector",
                                      "group_max": 0.3, "participation": 0.01})
    )  # fmt: skip
    h, v = _state(market, t_pos, seed)
    got = _execute(spec, market, t_pos, h).to_numpy()
    w0 = (h / h.sum()).to_numpy()
    past = market.returns.iloc[t_pos - 60 : t_pos].to_numpy()
    mu, sigma = past.mean(axis=0), np.cov(past, rowvar=False)
    adv = market.dollar_volumes.iloc[:t_pos].ewm(span=10).mean().iloc[-1].to_numpy()
    r_cash = market.cash_return.iloc[t_pos - 1]
    b = _impact_mult(market, t_pos, v, spec)
    groups = pd.Series(SECTORS)[market.tickers]
    e = np.array([[s == g for g in sorted(set(SECTORS.values()))] for s in groups], float)
    w = cp.Variable(market.n_assets + 1)
    z = w - w0
    objective = (
        mu @ w[:-1] + r_cash * w[-1] - 5.0 * cp.quad_form(w[:-1], sigma, assume_PSD=True)
        - (0.0005 * cp.sum(cp.abs(z[:-1])) + b @ cp.power(cp.abs(z[:-1]), 1.5))
    )  # fmt: skip
    cons = [cp.sum(z) == 0, w[:-1] >= 0, w[:-1] <= 0.3, cp.sum(cp.abs(w[:-1])) <= 1.0,
            e.T @ w[:-1] <= 0.3, cp.abs(z[:-1]) <= 0.01 * adv / v]  # fmt: skip
    cp.Problem(cp.Maximize(objective), cons).solve(
        solver="CLARABEL", tol_gap_abs=1e-9, tol_gap_rel=1e-9, tol_feas=1e-9, max_iter=500
    )
    np.testing.assert_allclose(got, w.value, atol=1e-6)
    assert (e.T @ got[:-1] <= 0.3 + TOL).all()
    assert (np.abs(got - w0)[:-1] <= 0.01 * adv / v + TOL).all()
