"""The per-period path of the learned views (arrays, positions per universe, inference mode)
gives the numbers of the computation it replaced: pandas frames reordered by ticker name,
the window of their own arrays, the encoder under ``no_grad``, frames indexed by ticker.
Bit-identical where the frames are laid out by columns (pandas' layout, the frames
cvxportfolio hands a policy); a frame copied by rows differs only by the matrix product's
rounding (< 1e-12): windows are now computed on one layout. Correctness only, no timings:
a few dates, universe orders, feature sets and both checkpoint kinds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mpo.errors import DataError
from mpo.forecast.learned import (
    LearnedFactorRisk,
    LearnedReturnsForecast,
    LearnedViews,
    ledoit_wolf_factor,
)
from mpo.learn.baselines import TwoStageModel
from mpo.learn.checkpoint import Checkpoint, save_checkpoint
from mpo.learn.dataset import (
    FeatureSpec,
    _window_features,
    history_tail,
    window_at,
    window_from_arrays,
)
from mpo.learn.encoders import EncoderConfig, Views
from mpo.learn.train import build_dmpo_model

QP = {"risk_aversion": 1.0, "gamma": 1e-3, "eps": 1e-6, "w_max": 0.4, "delta": 0.3,
      "learned_delta": False, "backend": "fast"}  # fmt: skip
#: every kind of feature: shifted returns, EWM std, rolling mean, EWM of volumes, a risk window
ALL = FeatureSpec(window=10, horizon=2,
                  features=("returns", "volatility", "momentum", "volume", "drawdown"))  # fmt: skip
PLAIN = FeatureSpec(window=10, horizon=2, features=("returns", "volatility"))


def _write(path, tickers, features: FeatureSpec, kind: str = "dmpo"):
    enc = EncoderConfig(kind="lstm", n_assets=len(tickers), n_features=features.n_features,
                        window=features.window, horizon=features.horizon, hidden=8,
                        factor="lowrank_diag", rank=2, mu_scale=5e-3)  # fmt: skip
    model = build_dmpo_model(enc, QP, 0) if kind == "dmpo" else TwoStageModel(enc, QP)
    ckpt = Checkpoint(kind=kind, state_dict=model.state_dict(), encoder_config=enc.to_dict(),
                      feature_config=features.to_dict(), qp_config=dict(QP),
                      tickers=list(tickers), train_window=["2017-01-03", "2017-05-31"],
                      fingerprint="test", seed=0)  # fmt: skip
    return save_checkpoint(ckpt, path)


def _old_window(spec: FeatureSpec, assets: pd.DataFrame, vols: pd.DataFrame | None):
    """window_at as it was: the last rows of the frames, their arrays in whatever layout."""
    tail = history_tail(spec)
    v = None if "volume" not in spec.features else vols.iloc[-tail:].to_numpy(dtype=float)
    return _window_features(assets.iloc[-tail:].to_numpy(dtype=float), v, spec)


def _reference(views: LearnedViews, t, past_returns, past_volumes) -> dict:
    """The computation the per-period path replaced, written out: frames reordered by
    ticker name, the window of their arrays, the encoder under no_grad."""
    keep = max(history_tail(views.features), views.lw_lookback)
    past_returns = past_returns.iloc[-keep:]
    past_volumes = None if past_volumes is None else past_volumes.iloc[-keep:]
    assets = past_returns.iloc[:, :-1][views.tickers]
    vols = None if past_volumes is None else past_volumes[views.tickers]
    X = torch.as_tensor(_old_window(views.features, assets, vols), dtype=torch.float64)[None]
    with torch.no_grad():
        if views.kind == "dmpo":
            v = views.model.views(X)
        else:
            L = ledoit_wolf_factor(assets, views.lw_lookback, t)
            v = Views(views.model.mu(X), torch.as_tensor(L)[None])
    d = v.d[0].numpy() if v.d is not None else 0.0
    idx = pd.Index(views.tickers)
    return {
        "mu": pd.DataFrame(v.mu[0].numpy(), columns=idx),
        "F": pd.DataFrame(v.L[0].numpy().T, columns=idx),
        "d": pd.Series(np.full(len(idx), views.eps) + d, index=idx),
    }


def _by_columns(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` on one column-major block (how pandas builds a frame from columns)."""
    return pd.DataFrame(np.asfortranarray(frame.to_numpy()), frame.index, frame.columns)


def _past(market, t, order=None, by_rows=False):
    """Past returns (cash last) and dollar volumes at ``t``, assets in ``order``; laid out
    by columns, or (``by_rows``) volumes copied by rows as ``frame[tickers]`` may do."""
    order = list(market.tickers) if order is None else order
    past = market.returns_with_cash().loc[market.calendar < t][[*order, market.cash_key]]
    vols = market.dollar_volumes.loc[past.index][order]
    if by_rows:
        vols = pd.DataFrame(np.ascontiguousarray(vols.to_numpy()), vols.index, vols.columns,
                            copy=False)  # fmt: skip
        assert vols.to_numpy().flags.c_contiguous
    return _by_columns(past), vols if by_rows else _by_columns(vols)


@pytest.fixture(scope="module")
def dates(market):
    cal = market.calendar
    return [cal[ALL.warmup + ALL.window + 1], cal[150], cal[len(cal) - 1]]


@pytest.mark.parametrize("features", [ALL, PLAIN], ids=["all-features", "returns-vol"])
@pytest.mark.parametrize("kind", ["dmpo", "two_stage"])
def test_views_equal_the_replaced_computation_bit_for_bit(market, dates, tmp_path, features, kind):
    views = LearnedViews(_write(tmp_path / "m.pt", market.tickers, features, kind))
    shuffled = market.tickers[::-1]
    for t in dates:
        for order in (None, shuffled, None):  # positions recomputed when the columns change
            past, vols = _past(market, t, order)
            got, want = views.at(t, past, vols), _reference(views, t, past, vols)
            for key in ("mu", "F"):
                pd.testing.assert_frame_equal(got[key], want[key], check_exact=True)
            pd.testing.assert_series_equal(got["d"], want["d"], check_exact=True)


def test_frames_copied_by_rows_give_the_views_to_rounding(market, dates, tmp_path):
    views = LearnedViews(_write(tmp_path / "m.pt", market.tickers, ALL))
    for t in dates:
        for order in (None, market.tickers[::-1]):
            past, vols = _past(market, t, order, by_rows=True)
            got, want = views.at(t, past, vols), _reference(views, t, past, vols)
            for key in ("mu", "F", "d"):
                np.testing.assert_allclose(got[key], want[key], rtol=1e-12, atol=1e-15)
            # and the same numbers as the frames laid out by columns, to the bit
            again = views.at(t, *_past(market, t, order))
            pd.testing.assert_frame_equal(got["mu"], again["mu"], check_exact=True)


def test_the_risk_and_forecast_terms_get_the_old_values_in_the_universe_order(
    market, dates, tmp_path
):
    views = LearnedViews(_write(tmp_path / "m.pt", market.tickers, ALL))
    universe_order = [*market.tickers[3:], *market.tickers[:3]]
    for order in (None, universe_order):
        past, vols = _past(market, dates[1], order)
        risk = LearnedFactorRisk(views)
        risk.initialize_estimator(universe=past.columns)
        cache: dict = {}
        risk.values_in_time(dates[1], past, vols, cache=cache)
        want = _reference(views, dates[1], past, vols)
        tickers = past.columns[:-1]  # what LearnedFactorRisk read before: by name
        np.testing.assert_array_equal(risk._exposures.value, want["F"][tickers].to_numpy())
        np.testing.assert_array_equal(risk._idio_sqrt.value, np.sqrt(want["d"][tickers].to_numpy()))
        for tau in range(ALL.horizon):
            mu = LearnedReturnsForecast(views).values_in_time(
                dates[1], past, vols, mpo_step=tau, cache=cache
            )
            pd.testing.assert_series_equal(mu, want["mu"].iloc[tau], check_exact=True)


def test_window_from_arrays_equals_window_at(market, dates):
    for t in dates:
        past, vols = _past(market, t)
        assets = past.iloc[:, :-1]
        want = window_at(t, assets, vols, ALL)
        got = window_from_arrays(t, assets.to_numpy(), vols.to_numpy(), ALL, assets.index,
                                 list(assets.columns))  # fmt: skip
        np.testing.assert_array_equal(got, want)


def test_window_from_arrays_names_a_bad_value_like_window_at(market, dates):
    past, vols = _past(market, dates[1])
    assets = past.iloc[:, :-1].copy()
    assets.iloc[-3, 2] = np.nan
    with pytest.raises(DataError) as old:
        window_at(dates[1], assets, vols, ALL)
    with pytest.raises(DataError) as new:
        window_from_arrays(dates[1], assets.to_numpy(), vols.to_numpy(), ALL, assets.index,
                           list(assets.columns))  # fmt: skip
    assert str(new.value) == str(old.value)
    assert repr(market.tickers[2]) in str(new.value)
    with pytest.raises(DataError, match="needs 13 periods of history"):
        window_from_arrays(dates[1], assets.to_numpy()[:12], None, PLAIN, assets.index[:12],
                           list(assets.columns))  # fmt: skip
    with pytest.raises(DataError, match="'volume' feature needs volumes"):
        window_from_arrays(dates[1], assets.to_numpy(), None, ALL, assets.index,
                           list(assets.columns))  # fmt: skip


def test_volumes_without_a_ticker_raise_a_data_error(market, dates, tmp_path):
    views = LearnedViews(_write(tmp_path / "m.pt", market.tickers, ALL))
    past, vols = _past(market, dates[1])
    with pytest.raises(DataError, match=rf"no column for the tickers \['{market.tickers[0]}'\]"):
        views.at(dates[1], past, vols.drop(columns=market.tickers[0]))
