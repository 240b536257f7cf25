"""Seconds per backtest period of SPO and MPO (H = 1, 2, 3, 5), and mpo's overhead.

For each configuration three runs over the same periods:

* ``mpo``: ``mpo.backtest.run_backtests`` (spec -> builder -> cvxportfolio
  simulator -> result extraction, metrics and bootstrap CIs), Hold excluded;
* ``bare``: the *same* cvxportfolio policy and cost objects handed straight to
  ``cvxportfolio.MarketSimulator.backtest`` (no mpo layer);
* ``cvx-native``: the nearest policy built from cvxportfolio's own forecasters
  (``HistoricalMeanReturn``/``HistoricalCovariance`` with calendar windows,
  ``TransactionCost`` with its default estimators), for reference.

``overhead = mpo / bare``; the target is <= 1.10.

Usage: ``python benchmarks/backtest_speed.py [--periods 100] [--quick] [--out PATH]``.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import logging
import time
from pathlib import Path

import cvxportfolio as cvx
import pandas as pd

from mpo.backtest import initial_holdings, run_backtests
from mpo.config import parse_spec
from mpo.data.sources import load_market_data
from mpo.io import package_versions, write_json
from mpo.policies import build_policy, cost_model

LOOKBACK = 252


def _spec(kind: str, horizon: int) -> dict:
    return {
        "name": f"{kind}_H{horizon}",
        "kind": kind,
        "forecast": {"kind": "rolling_mean", "lookback": LOOKBACK},
        "risk": {"kind": "full", "lookback": LOOKBACK},
        "objective": {"gamma_risk": 5.0, "gamma_trade": 1.0, "planning_horizon": horizon},
        "constraints": {"long_only": True, "max_weight": 0.2, "leverage": 1.0},
    }


def _native_policy(spec, market):
    """cvxportfolio-native forecasters with comparable windows."""
    days = pd.Timedelta(days=LOOKBACK * 365.25 / 252)
    costs = spec.costs
    objective = (
        cvx.ReturnsForecast(r_hat=cvx.forecast.HistoricalMeanReturn(rolling=days))
        - spec.objective.gamma_risk
        * cvx.FullCovariance(Sigma=cvx.forecast.HistoricalCovariance(rolling=days))
        - spec.objective.gamma_trade
        * cvx.TransactionCost(
            a=costs.half_spread,
            b=costs.impact.b,
            sigma=cvx.forecast.HistoricalStandardDeviation(rolling=pd.Timedelta(days=14)),
            volume_hat=cvx.forecast.HistoricalMeanVolume(rolling=pd.Timedelta(days=14)),
        )
    )
    cons = [cvx.LongOnly(), cvx.MaxWeights(0.2), cvx.LeverageLimit(1.0)]
    return cvx.MultiPeriodOptimization(
        objective, cons, planning_horizon=spec.objective.planning_horizon, solver="CLARABEL"
    )


def _time(fn) -> float:
    tic = time.perf_counter()
    fn()
    return time.perf_counter() - tic


def bench(market, label: str, periods: int, horizons: list[int]) -> list[dict]:
    rows = []
    cal = market.calendar
    start_pos = LOOKBACK + 10
    t0, t1 = cal[start_pos], cal[start_pos + periods]
    for kind, h in [("spo", 1)] + [("mpo", h) for h in horizons]:
        spec = parse_spec(_spec(kind, h))
        cvx_market = market.to_cvxportfolio()
        sim = cvx.MarketSimulator(market_data=cvx_market, costs=cost_model(spec).simulator_costs())
        h0 = initial_holdings(spec, market.tickers, market.cash_key)
        bare = _time(
            lambda spec=spec, sim=sim, h0=h0: sim.backtest(
                build_policy(spec, market.tickers, cal), start_time=t0, end_time=t1, h=h0
            )
        )
        ours = _time(
            lambda spec=spec: run_backtests(
                [spec], market, start=t0, end=t1, include_hold=False, progress=False
            )
        )
        native_sim = cvx.MarketSimulator(
            market_data=cvx_market, costs=[cvx.TransactionCost(a=spec.costs.half_spread, b=1.0)]
        )
        native = _time(
            lambda spec=spec, s=native_sim, h0=h0: s.backtest(
                _native_policy(spec, market), start_time=t0, end_time=t1, h=h0
            )
        )
        row = {
            "data": label,
            "assets": market.n_assets,
            "policy": kind.upper(),
            "H": h,
            "periods": periods,
            "mpo_s_per_period": ours / periods,
            "bare_s_per_period": bare / periods,
            "cvx_native_s_per_period": native / periods,
            "overhead": ours / bare,
        }
        rows.append(row)
        print(
            f"{label:>10} n={market.n_assets:<4d} {kind.upper():>3} H={h}: "
            f"mpo {1e3 * row['mpo_s_per_period']:7.1f} ms  bare {1e3 * row['bare_s_per_period']:7.1f} ms"
            f"  native {1e3 * row['cvx_native_s_per_period']:7.1f} ms  overhead {row['overhead']:.3f}",
            flush=True,
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--periods", type=int, default=100)
    parser.add_argument("--quick", action="store_true", help="20 periods, H in {1, 3}.")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/backtest_speed.json"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    periods = 20 if args.quick else args.periods
    horizons = [1, 3] if args.quick else [1, 2, 3, 5]
    sp20 = load_market_data("sp20", adv=1e8, start="2017-01-01")
    synth = load_market_data("synthetic", n_assets=100, n_periods=LOOKBACK + periods + 40, seed=0)
    rows = bench(sp20, "sp20", periods, horizons)
    rows += bench(synth, "synthetic", max(periods // 2, 10), horizons)
    table = pd.DataFrame(rows)
    print()
    print(table.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    write_json(
        {
            "rows": rows,
            "max_overhead": float(table["overhead"].max()),
            "target_overhead": 1.10,
            "env": {"OPENBLAS_NUM_THREADS": os.environ.get("OPENBLAS_NUM_THREADS")},
            "versions": package_versions(),
        },
        args.out,
    )
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
