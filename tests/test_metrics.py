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


# ------------------------------------------------------- multiple-testing statistics
def test_deflated_sharpe_matches_the_papers_example():
    """Bailey & Lopez de Prado (2014), section 5: annual SR 2.5 over T=1250 days, skew -3,
    kurtosis 10, N=100 trials with annualised Sharpe variance 1/2 -> SR0 = 0.1132 per day
    and DSR = 0.9004."""
    from mpo.metrics import expected_max_sharpe, psr_from_moments

    sr0 = expected_max_sharpe(100, 0.5 / 250)
    assert sr0 == pytest.approx(0.1132, abs=5e-5)
    moments = {"T": 1250, "sharpe": 2.5 / np.sqrt(250), "skew": -3.0, "kurt": 10.0}
    assert psr_from_moments(moments, sr0) == pytest.approx(0.9004, abs=1e-3)


def test_expected_max_sharpe_against_monte_carlo():
    """The closed form approximates E[max of N iid N(0, V) Sharpe estimates]."""
    from mpo.metrics import expected_max_sharpe

    rng = np.random.default_rng(0)
    for n in (10, 100):
        draws = rng.normal(0.0, 0.05, size=(20000, n)).max(axis=1).mean()
        assert expected_max_sharpe(n, 0.05**2) == pytest.approx(draws, rel=0.03)
    assert expected_max_sharpe(1, 1.0) == 0.0


def test_psr_is_the_normal_closed_form_for_gaussian_returns():
    from scipy import stats

    from mpo.metrics import deflated_sharpe_ratio, probabilistic_sharpe_ratio, return_moments

    x = np.random.default_rng(1).normal(5e-4, 1e-2, size=2000)
    m = return_moments(x)
    expected = stats.norm.cdf(
        m["sharpe"]
        * np.sqrt(1999)
        / np.sqrt(1 - m["skew"] * m["sharpe"] + (m["kurt"] - 1) / 4 * m["sharpe"] ** 2)
    )
    assert probabilistic_sharpe_ratio(x) == pytest.approx(expected, abs=1e-12)
    # more trials -> a higher luck threshold -> a lower deflated probability
    few = deflated_sharpe_ratio(x, np.r_[m["sharpe"], np.linspace(-0.02, 0.02, 4)])
    many = deflated_sharpe_ratio(x, np.r_[m["sharpe"], np.linspace(-0.02, 0.02, 99)])
    assert many["dsr"] < few["dsr"] < few["psr"] == pytest.approx(probabilistic_sharpe_ratio(x))
    assert np.isnan(probabilistic_sharpe_ratio(np.zeros(10)))
