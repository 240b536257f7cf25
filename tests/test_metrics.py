"""Metrics against closed forms."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpo import metrics


def _series(values, start="2020-01-01"):
    return pd.Series(values, index=pd.bdate_range(start, periods=len(values)))


def test_max_drawdown_closed_form():
    r = _series([0.10, -0.20, 0.05, -0.10, 0.30])
    # values 1.1, 0.88, 0.924, 0.8316, 1.08108: peak 1.1, trough 0.8316
    assert metrics.max_drawdown(r) == pytest.approx(1 - 0.8316 / 1.1, rel=1e-12)


def test_sharpe_sortino_and_cagr():
    rng = np.random.default_rng(0)
    x = rng.normal(0.0005, 0.01, 1000)
    assert metrics.sharpe_ratio(x, 252) == pytest.approx(x.mean() / x.std(ddof=1) * np.sqrt(252))
    down = np.sqrt(np.mean(np.minimum(x, 0) ** 2))
    assert metrics.sortino_ratio(x, 252) == pytest.approx(x.mean() / down * np.sqrt(252))
    r = _series(np.full(252, 0.001))
    assert metrics.annualized_return(r, 252) == pytest.approx(1.001**252 - 1)
    assert np.isnan(metrics.sharpe_ratio(np.zeros(10), 252))


def test_periods_per_year_business_days():
    idx = pd.bdate_range("2020-01-01", "2023-12-31")
    assert metrics.periods_per_year(idx) == pytest.approx(261, abs=1)


def test_bootstrap_ci_covers_and_is_seeded():
    rng = np.random.default_rng(1)
    x = rng.normal(0.001, 0.01, 750)
    lo, hi = metrics.bootstrap_sharpe_ci(x, 252, n_boot=500, seed=3)
    sr = metrics.sharpe_ratio(x, 252)
    assert lo < sr < hi
    assert (lo, hi) == metrics.bootstrap_sharpe_ci(x, 252, n_boot=500, seed=3)
    assert (lo, hi) != metrics.bootstrap_sharpe_ci(x, 252, n_boot=500, seed=4)
    # CI width ~ 2 * 1.96 * sqrt((1 + SR_p^2 / 2) / T) * sqrt(252) for iid returns
    width = 2 * 1.96 * np.sqrt(252 / len(x))
    assert 0.6 * width < hi - lo < 1.6 * width


def test_paired_bootstrap_of_identical_series_is_zero():
    x = np.random.default_rng(2).normal(0.001, 0.01, 300)
    lo, hi = metrics.bootstrap_sharpe_ci(np.column_stack([x, x]), 252, n_boot=200)
    assert lo == hi == 0.0


def test_summary_costs_are_annualised_fractions():
    idx = pd.bdate_range("2021-01-01", periods=252)
    r = pd.Series(0.0, index=idx)
    costs = pd.DataFrame({"spread": 100.0, "impact": 50.0}, index=idx)
    value = pd.Series(1e6, index=idx)
    out = metrics.summary(r, r, pd.Series(0.01, index=idx), costs, value, ppy=252)
    assert out["spread_cost"] == pytest.approx(100 / 1e6 * 252)
    assert out["impact_cost"] == pytest.approx(50 / 1e6 * 252)
    assert out["annual_turnover"] == pytest.approx(0.01 * 252)
