"""Risk features (drawdown, historical VaR / CVaR, downside volatility): each against an
independent pandas / numpy computation to 1e-12, by hand on a tiny path, their warm-up,
the backtest window equal to the panel, no look-ahead, and the spec round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from _helpers import tiny_market

from mpo.data.market import MarketData
from mpo.errors import SpecError
from mpo.learn.dataset import FEATURES, FeatureSpec, compute_features, window_at
from mpo.learn.features import RISK_FEATURES, cvar_rank, risk_feature

TOL = {"rtol": 1e-12, "atol": 1e-12}
SPEC = FeatureSpec(
    window=5,
    features=RISK_FEATURES,
    drawdown_window=30,
    var_window=40,
    var_level=0.9,  # k = ceil(0.1 * 40) = 4 worst returns
    downside_window=15,
)


@pytest.fixture(scope="module")
def market() -> MarketData:
    return tiny_market(n_periods=160, seed=3)


@pytest.fixture(scope="module")
def panel(market):
    return compute_features(market, SPEC)


def _column(panel, name: str) -> pd.DataFrame:
    f = panel.names.index(name)
    return pd.DataFrame(panel.values[:, :, f], index=panel.dates, columns=panel.tickers)


def _expected(market: MarketData, panel, series: pd.DataFrame) -> pd.DataFrame:
    """``series`` (row ``t`` = statistic of the returns up to and including ``t``) moved to
    the feature convention (row ``t`` uses returns before ``t``), scaled, on the panel."""
    return series.shift(1).loc[panel.dates] * SPEC.return_scale


def test_drawdown_equals_full_history_wealth_over_its_trailing_peak(market, panel):
    """Wealth compounded over the whole history (pandas cumprod), peak = rolling max of
    the L + 1 values ending at t (the value before the window's first return included)."""
    L = SPEC.drawdown_window
    r = market.returns
    wealth = pd.concat([pd.DataFrame(1.0, index=[r.index[0] - pd.Timedelta(days=1)],
                                     columns=r.columns), (1 + r).cumprod()])  # fmt: skip
    peak = wealth.rolling(L + 1, min_periods=L + 1).max()
    dd = (1 - wealth / peak).iloc[1:]
    got = _column(panel, "drawdown")
    np.testing.assert_allclose(got, _expected(market, panel, dd), **TOL)
    assert (got >= 0).all().all() and (got == 0).any().any()  # 0 at a trailing high


def test_var_is_the_inverted_cdf_quantile_and_cvar_the_mean_of_the_k_worst(market, panel):
    L, q = SPEC.var_window, 1 - SPEC.var_level
    r = market.returns
    var = r.rolling(L).apply(lambda a: -np.quantile(a, q, method="inverted_cdf"), raw=True)
    cvar = r.rolling(L).apply(lambda a: -np.sort(a)[:4].mean(), raw=True)
    got_var, got_cvar = _column(panel, "var"), _column(panel, "cvar")
    np.testing.assert_allclose(got_var, _expected(market, panel, var), **TOL)
    np.testing.assert_allclose(got_cvar, _expected(market, panel, cvar), **TOL)
    assert (got_cvar.to_numpy() >= got_var.to_numpy()).all()
    assert (got_var > 0).all().all()  # daily returns: the 10% worst of 40 are losses


def test_downside_vol_is_the_rolling_semi_deviation_below_zero(market, panel):
    L = SPEC.downside_window
    r = market.returns
    semi = np.sqrt((r.clip(upper=0.0) ** 2).rolling(L).mean())
    np.testing.assert_allclose(_column(panel, "downside_vol"), _expected(market, panel, semi),
                               **TOL)  # fmt: skip


def test_risk_features_by_hand():
    """One asset, window 3: returns +10%, -50%, +20%, then +100%."""
    x = np.array([[0.1], [-0.5], [0.2], [1.0]])
    spec = FeatureSpec(drawdown_window=3, var_window=3, var_level=0.5, downside_window=3)
    # values 1, 1.1, 0.55, 0.66: 1 - 0.66 / 1.1 = 0.4; then 1, 0.5, 0.6, 1.2: a new high
    np.testing.assert_allclose(risk_feature("drawdown", x, spec)[:, 0], [0.4, 0.0], **TOL)
    assert cvar_rank(0.5, 3) == 2  # ceil(1.5)
    np.testing.assert_allclose(risk_feature("var", x, spec)[:, 0], [-0.1, -0.2], **TOL)
    np.testing.assert_allclose(risk_feature("cvar", x, spec)[:, 0], [0.2, 0.15], **TOL)
    np.testing.assert_allclose(
        risk_feature("downside_vol", x, spec)[:, 0], [0.5 / np.sqrt(3)] * 2, **TOL
    )


def test_cvar_rank_counts_the_tail_as_decimal_arithmetic_does():
    assert cvar_rank(0.95, 60) == 3  # (1 - 0.95) * 60 is 3.0000000000000027 in floats
    assert cvar_rank(0.95, 63) == 4
    assert cvar_rank(0.9, 40) == 4
    assert cvar_rank(0.99, 20) == 1  # at least one return


def test_warmup_is_the_longest_window_and_the_first_row_uses_a_full_window(market, panel):
    assert SPEC.warmup == 40
    assert FeatureSpec(features=("returns", "drawdown"), drawdown_window=30).warmup == 30
    assert FeatureSpec(features=("momentum", "downside_vol"), momentum_lookback=21,
                       downside_window=50).warmup == 50  # fmt: skip
    assert FeatureSpec(features=("returns",), var_window=500).warmup == 1  # unused window
    assert panel.dates[0] == market.calendar[40]
    first = market.returns.iloc[:40].to_numpy()  # the 40 returns before the first row
    k = panel.names.index("cvar")
    np.testing.assert_allclose(panel.values[0, :, k], -np.sort(first, 0)[:4].mean(0) * 100,
                               **TOL)  # fmt: skip


def test_window_at_equals_the_panel_beyond_the_history_tail():
    """A backtest keeps only the recent past: on a history longer than that tail the
    window still equals the panel of the whole history, every feature."""
    market = tiny_market(n_periods=1100, seed=4)
    spec = FeatureSpec(window=6, features=FEATURES, drawdown_window=70)
    panel = compute_features(market, spec)
    for t in (market.calendar[200], market.calendar[-1]):
        pos = panel.dates.get_loc(t)
        past = market.returns.loc[market.calendar < t]
        got = window_at(t, past, market.dollar_volumes.loc[past.index], spec)
        np.testing.assert_allclose(got, panel.values[pos - 5 : pos + 1], **TOL)


@pytest.mark.parametrize("name", RISK_FEATURES)
def test_no_look_ahead_each_risk_feature(market, name):
    """Changing the returns from ``cut`` on leaves every row up to ``cut`` unchanged; the
    row after ``cut`` (the first to see the return of ``cut``) changes."""
    spec = FeatureSpec(window=5, features=(name,), drawdown_window=10, var_window=10,
                       downside_window=10)  # fmt: skip
    cut = market.calendar[100]
    r = market.returns.copy()
    later = r.index >= cut
    r.loc[later] = np.random.default_rng(7).normal(-0.02, 0.05, (int(later.sum()), r.shape[1]))
    other = MarketData(returns=r, cash_return=market.cash_return, volumes=market.volumes)
    a, b = compute_features(market, spec), compute_features(other, spec)
    upto = a.dates <= cut
    np.testing.assert_array_equal(a.values[upto], b.values[upto])
    after = int(np.flatnonzero(upto)[-1]) + 1
    assert not np.array_equal(a.values[after], b.values[after])


def test_spec_round_trip_and_old_checkpoints_load():
    spec = FeatureSpec(features=("returns", "cvar"), var_window=50, var_level=0.99)
    back = FeatureSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert back == spec
    old = {"window": 20, "horizon": 1, "features": ["returns", "volatility"], "vol_span": 21.0,
           "momentum_lookback": 21, "volume_span": 10.0, "return_scale": 100.0}  # fmt: skip
    loaded = FeatureSpec.from_dict(old)
    assert loaded == FeatureSpec(features=("returns", "volatility"))
    assert loaded.to_dict()["var_level"] == 0.95


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"var_level": 1.0}, "var_level"),
        ({"var_level": 0.0}, "var_level"),
        ({"drawdown_window": 0}, "drawdown_window"),
        ({"downside_window": 0}, "downside_window"),
    ],
)
def test_bad_risk_parameters_are_spec_errors(kwargs, match):
    with pytest.raises(SpecError, match=match):
        FeatureSpec(**kwargs)
