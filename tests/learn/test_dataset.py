"""Features, windows and splits: shapes, no look-ahead, purge gaps, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from _helpers import tiny_market, tiny_spec

from mpo.data.market import MarketData
from mpo.errors import DataError, SpecError
from mpo.learn.dataset import (
    FeaturePanel,
    FeatureSpec,
    chronological_split,
    compute_features,
    make_dataset,
)
from mpo.learn.train import build_dmpo_model

ALL = ("returns", "volatility", "momentum", "volume")
RISK = ("drawdown", "var", "cvar", "downside_vol")  # default windows 63, 63, 21


def _perturbed(market: MarketData, date: pd.Timestamp, seed: int = 1) -> MarketData:
    """Same market up to (excluding) ``date``'s forward return; everything later changed."""
    rng = np.random.default_rng(seed)
    r = market.returns.copy()
    later = r.index >= date
    r.loc[later] = rng.normal(0, 0.05, (int(later.sum()), r.shape[1]))
    v = market.volumes.copy()
    v.loc[later] = v.loc[later] * rng.uniform(0.2, 5.0, (int(later.sum()), v.shape[1]))
    return MarketData(returns=r, cash_return=market.cash_return, volumes=v, name="perturbed")


def test_windows_and_targets_are_the_right_rows():
    market = tiny_market(n_periods=120)
    spec = FeatureSpec(window=4, horizon=3, features=("returns",), return_scale=100.0)
    ds = make_dataset(market, spec)
    pos = ds.positions[[0, 7, -1]]
    X, Y = ds.windows(pos), ds.targets(pos)
    assert X.shape == (3, 4, 5, 1) and Y.shape == (3, 3, 5)
    R = market.returns
    for k, p in enumerate(pos):
        t = ds.dates[p]
        i = R.index.get_loc(t)
        # the window's last row is the return of the period before t, scaled
        np.testing.assert_allclose(X[k, -1, :, 0].numpy(), 100 * R.iloc[i - 1].to_numpy())
        np.testing.assert_allclose(X[k, 0, :, 0].numpy(), 100 * R.iloc[i - 4].to_numpy())
        # targets start at t: returns from t to t+1, ..., t+2 to t+3
        np.testing.assert_allclose(Y[k].numpy(), R.iloc[i : i + 3].to_numpy())


def test_no_look_ahead_in_features_windows_and_decisions():
    market = tiny_market(n_periods=200)
    spec = tiny_spec(features={"window": 6, "features": [*ALL, *RISK], "momentum_lookback": 10})
    fs = spec.feature_spec()
    cut = market.calendar[150]
    other = _perturbed(market, cut)
    a, b = make_dataset(market, fs), make_dataset(other, fs)
    upto = np.flatnonzero(a.dates <= cut)
    assert torch.equal(a.features[upto], b.features[upto])
    # the cost inputs of the period starting at `cut` are realised (they score its outcome,
    # like the targets); those of earlier periods are unchanged
    before = upto[:-1]
    assert torch.equal(a.sigma[before], b.sigma[before])
    assert torch.equal(a.volume[before], b.volume[before])
    assert not torch.equal(a.sigma[upto[-1]], b.sigma[upto[-1]])
    assert not torch.equal(a.features, b.features)  # the perturbation does reach later rows
    pos = a.positions[a.positions <= upto[-1]]
    assert torch.equal(a.windows(pos), b.windows(pos))
    model = build_dmpo_model(spec.encoder_config(5), spec.qp_options(), seed=0)
    w_prev = torch.full((len(pos), 5), 0.2, dtype=torch.float64)
    with torch.no_grad():
        wa, wb = model(a.windows(pos), w_prev), model(b.windows(pos), w_prev)
    assert torch.equal(wa, wb)


def test_split_is_chronological_with_purge_gaps():
    ds = make_dataset(tiny_market(n_periods=400), FeatureSpec(window=7, horizon=2))
    train, val, test = chronological_split(ds, 0.2, 0.2)
    gap = 7 + 2 - 1
    assert val.positions[0] - train.positions[-1] == gap + 1
    assert test.positions[0] - val.positions[-1] == gap + 1
    # no training target reaches a validation window
    last_target = train.positions[-1] + 2 - 1
    first_window_row = val.positions[0] - 7 + 1
    assert last_target < first_window_row - 0  # returns rows strictly before the val window
    assert train.end < val.start < test.start
    assert abs(len(val) - len(test)) <= 1


def test_too_short_history_is_a_data_error():
    market = tiny_market(n_periods=30)
    with pytest.raises(DataError, match="periods"):
        make_dataset(market, FeatureSpec(window=40))
    ds = make_dataset(market, FeatureSpec(window=5))
    with pytest.raises(DataError, match="each needs"):
        chronological_split(ds, 0.2, 0.2, min_samples=10)


def test_nan_features_name_feature_ticker_and_date():
    dates = pd.bdate_range("2020-01-01", periods=4)
    values = np.zeros((4, 2, 1))
    values[2, 1, 0] = np.nan
    with pytest.raises(DataError, match=r"'returns'.*'B'.*2020-01-03"):
        FeaturePanel(values, dates, ["A", "B"], ("returns",))


def test_feature_spec_validation():
    with pytest.raises(SpecError, match="features"):
        FeatureSpec(features=("returns", "oracle"))
    with pytest.raises(SpecError, match="window"):
        FeatureSpec(window=0)


def test_features_are_finite_and_scaled():
    market = tiny_market(n_periods=150)
    panel = compute_features(market, FeatureSpec(window=5, features=ALL, momentum_lookback=10))
    assert panel.values.shape[1:] == (5, 4)
    assert np.isfinite(panel.values).all()
    assert panel.dates[0] == market.calendar[10]  # warm-up of the 10-period momentum
