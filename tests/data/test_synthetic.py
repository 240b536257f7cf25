"""Synthetic market: seeding, realistic scale, and the planted structure is the one documented."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpo.data import make_synthetic, simulate_market


def test_same_seed_identical_different_seed_different():
    a, b = (
        make_synthetic(n_assets=5, n_periods=200, seed=3),
        make_synthetic(n_assets=5, n_periods=200, seed=3),
    )
    c = make_synthetic(n_assets=5, n_periods=200, seed=4)
    pd.testing.assert_frame_equal(a.returns, b.returns)
    pd.testing.assert_frame_equal(a.volumes, b.volumes)
    assert a.fingerprint() == b.fingerprint() != c.fingerprint()
    assert not np.allclose(a.returns.to_numpy(), c.returns.to_numpy())


def test_shapes_calendar_and_consistency():
    data = make_synthetic(n_assets=7, n_periods=300, start="2015-03-02")
    assert data.returns.shape == (300, 7) and data.name == "synthetic"
    assert data.calendar[0] == pd.Timestamp("2015-03-02")
    assert data.calendar.equals(pd.bdate_range("2015-03-02", periods=300))
    # prices are the cumulated returns
    implied = (data.prices.shift(-1) / data.prices - 1).iloc[:-1]
    np.testing.assert_allclose(
        implied.to_numpy(), data.returns.iloc[:-1].to_numpy(), rtol=1e-9, atol=1e-14
    )
    assert (data.volumes > 0).all().all()


def test_realistic_daily_scale():
    data = make_synthetic(n_assets=20, n_periods=3000, seed=1)
    vols = data.returns.std()
    assert 0.01 < vols.mean() < 0.02
    assert 0 < data.returns.mean().mean() < 1e-3
    # geometric mean of the dollar volumes is about adv
    assert np.exp(np.log(data.volumes).mean().mean()) == pytest.approx(1e8, rel=0.1)


def test_true_covariance_matches_sample():
    market = simulate_market(n_assets=5, n_periods=40_000, seed=2)
    truth = market.truth
    sample = market.data.returns.cov().to_numpy()
    np.testing.assert_allclose(sample, truth.covariance.to_numpy(), rtol=0.08, atol=1e-6)
    recomputed = truth.loadings.to_numpy() @ np.diag(
        truth.factor_vols**2
    ) @ truth.loadings.to_numpy().T + np.diag(truth.idiosyncratic_vols**2)
    np.testing.assert_allclose(truth.covariance.to_numpy(), recomputed, rtol=1e-12)


def test_no_predictability_means_constant_conditional_mean():
    truth = simulate_market(n_assets=4, n_periods=100, predictability=0.0).truth
    expected = np.tile(truth.mean.to_numpy(), (100, 1))
    np.testing.assert_allclose(truth.conditional_mean.to_numpy(), expected)


def test_conditional_mean_is_the_documented_past_only_formula():
    truth = simulate_market(n_assets=6, n_periods=500, predictability=0.4, seed=5).truth
    f = truth.factor_returns.to_numpy()
    B = truth.loadings.to_numpy()
    expected = truth.mean.to_numpy() + 0.4 * f[:-1] @ B.T  # uses f_{t-1} only
    np.testing.assert_allclose(truth.conditional_mean.to_numpy()[1:], expected, rtol=1e-12)


def test_planted_signal_explains_returns():
    market = simulate_market(n_assets=10, n_periods=20_000, predictability=0.5, seed=6)
    r = market.data.returns.to_numpy()
    m = market.truth.conditional_mean.to_numpy()
    resid = r - m
    # the residual is unpredictable by the conditional mean: slope of r on m is 1
    slope = np.sum((m - m.mean()) * (r - r.mean())) / np.sum((m - m.mean()) ** 2)
    assert slope == pytest.approx(1.0, abs=0.05)
    np.testing.assert_allclose(
        np.cov(resid.T), market.truth.conditional_covariance.to_numpy(), rtol=0.1, atol=2e-6
    )


def test_signal_learnable_from_past_returns_only():
    """Cross-sectional regression of r_{t-1} on B recovers f_{t-1}: past returns predict."""
    market = simulate_market(n_assets=20, n_periods=5000, predictability=0.5, seed=7)
    r = market.data.returns.to_numpy()
    B = market.truth.loadings.to_numpy()
    mu = market.truth.mean.to_numpy()
    f_hat = np.linalg.lstsq(B, (r[:-1] - mu).T, rcond=None)[0].T
    forecast = mu + 0.5 * f_hat @ B.T
    corr = np.corrcoef((forecast - mu).ravel(), (r[1:] - mu).ravel())[0, 1]
    assert corr > 0.2
    null = make_synthetic(n_assets=20, n_periods=5000, predictability=0.0, seed=7).returns
    rn = null.to_numpy()
    f0 = np.linalg.lstsq(B, (rn[:-1] - mu).T, rcond=None)[0].T
    assert abs(np.corrcoef((f0 @ B.T).ravel(), (rn[1:] - mu).ravel())[0, 1]) < 0.05


def test_volumes_correlate_with_absolute_returns():
    market = simulate_market(n_assets=10, n_periods=5000, seed=8)
    r = market.data.returns - market.truth.mean
    logv = np.log(market.data.volumes)
    corr = np.mean([np.corrcoef(r[c].abs(), logv[c])[0, 1] for c in r.columns])
    assert corr > 0.2


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(predictability=1.0), "predictability must be in"),
        (dict(n_assets=0), "n_assets >= 1"),
        (dict(n_periods=1), "n_periods >= 2"),
        (dict(adv=0.0), "adv must be a positive"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        make_synthetic(**kwargs)
