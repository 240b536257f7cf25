"""MarketData validation, the gap policy and the fingerprint."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest

from mpo.data import MarketData, forward_fill_gaps, returns_from_prices
from mpo.errors import DataError

from .conftest import make_prices


def build(returns=None, **kwargs) -> MarketData:
    prices = make_prices()
    returns = returns_from_prices(prices) if returns is None else returns
    kwargs.setdefault("cash_return", pd.Series(0.0, index=returns.index))
    kwargs.setdefault("adv", 1e8)
    return MarketData(returns=returns, **kwargs)


def returns_frame() -> pd.DataFrame:
    return returns_from_prices(make_prices())


# ---------------------------------------------------------------- values
@pytest.mark.parametrize("bad, kind", [(np.nan, "NaN"), (np.inf, "inf")])
def test_nonfinite_returns_name_ticker_and_date(bad, kind):
    r = returns_frame()
    r.iloc[4, 1] = bad
    with pytest.raises(DataError, match=rf"first: {kind} for ticker 'BBB' on 2021-01-08"):
        build(r)


def test_returns_below_minus_one_rejected():
    r = returns_frame()
    r.iloc[2, 0] = -1.5
    with pytest.raises(DataError, match=r"'AAA' on 2021-01-06 is <= -100%"):
        build(r)


def test_non_positive_prices_rejected_in_from_prices():
    p = make_prices()
    p.iloc[3, 2] = 0.0
    with pytest.raises(DataError, match=r"non-positive.*'CCC' on 2021-01-07"):
        MarketData.from_prices(p, adv=1e8)


def test_non_positive_prices_rejected_in_constructor():
    p = make_prices()
    r = returns_from_prices(p)
    prices = p.iloc[:-1].copy()
    prices.iloc[5, 0] = -1.0
    with pytest.raises(DataError, match=r"prices has 1 non-positive.*'AAA' on 2021-01-11"):
        build(r, prices=prices)


def test_infinite_prices_rejected():
    p = make_prices()
    p.iloc[3, 0] = np.inf
    with pytest.raises(DataError, match=r"infinite.*'AAA' on 2021-01-07"):
        MarketData.from_prices(p, adv=1e8)


def test_zero_volume_rejected_in_constructor():
    r = returns_frame()
    vols = pd.DataFrame(1e6, index=r.index, columns=r.columns)
    vols.iloc[0, 0] = 0.0
    with pytest.raises(DataError, match=r"volumes has 1 non-positive.*'AAA' on 2021-01-04"):
        build(r, volumes=vols)


def test_nonfinite_cash_rejected():
    r = returns_frame()
    cash = pd.Series(0.0, index=r.index)
    cash.iloc[3] = np.nan
    with pytest.raises(DataError, match="cash_return is missing or infinite on 2021-01-07"):
        build(r, cash_return=cash)


# ---------------------------------------------------------------- index
def test_duplicate_dates_rejected():
    r = returns_frame()
    r = pd.concat([r.iloc[:5], r.iloc[4:]])
    with pytest.raises(
        DataError, match=r"1 duplicate date\(s\), first 2021-01-08.*Drop duplicates"
    ):
        build(r, cash_return=pd.Series(0.0, index=r.index))


def test_unsorted_dates_rejected():
    r = returns_frame()
    r = r.iloc[[0, 1, 3, 2, 4, 5]]
    with pytest.raises(
        DataError, match=r"not sorted: 2021-01-06 comes after 2021-01-07.*sort_index"
    ):
        build(r, cash_return=pd.Series(0.0, index=r.index))


def test_unsorted_prices_rejected_in_from_prices():
    p = make_prices().iloc[[0, 2, 1, 3, 4]]
    with pytest.raises(DataError, match="prices dates are not sorted"):
        MarketData.from_prices(p, adv=1e8)


def test_non_datetime_index_rejected():
    r = returns_frame().reset_index(drop=True)
    with pytest.raises(DataError, match="DatetimeIndex.*parse_dates"):
        build(r, cash_return=pd.Series(0.0, index=r.index))


def test_tz_aware_index_rejected():
    r = returns_frame().tz_localize("UTC")
    with pytest.raises(DataError, match="timezone-aware.*tz_localize"):
        build(r, cash_return=pd.Series(0.0, index=r.index))


# ---------------------------------------------------------------- alignment
def test_volumes_with_other_tickers_rejected():
    r = returns_frame()
    vols = pd.DataFrame(1e6, index=r.index, columns=["AAA", "BBB", "ZZZ"])
    with pytest.raises(
        DataError,
        match=r"volumes columns .* only in volumes: \['ZZZ'\], only in returns: \['CCC'\]",
    ):
        build(r, volumes=vols)


def test_prices_in_other_order_rejected():
    p = make_prices()
    r = returns_from_prices(p)
    with pytest.raises(DataError, match="same tickers, different order"):
        build(r, prices=p.iloc[:-1][["CCC", "BBB", "AAA"]])


def test_prices_with_other_dates_rejected():
    p = make_prices()
    r = returns_from_prices(p)
    with pytest.raises(
        DataError, match=r"prices dates do not match returns' dates \(2 differ, first 2021-01-04\)"
    ):
        build(r, prices=p.iloc[1:])


def test_cash_with_other_dates_rejected():
    r = returns_frame()
    with pytest.raises(DataError, match="cash_return must be a Series with exactly"):
        build(r, cash_return=pd.Series(0.0, index=r.index[1:]))


def test_cash_column_in_returns_rejected():
    r = returns_frame().rename(columns={"AAA": "cash"})
    with pytest.raises(DataError, match="column named 'cash'"):
        build(r)


def test_volumes_missing_a_ticker_in_from_prices():
    p = make_prices()
    with pytest.raises(DataError, match=r"volumes lack ticker\(s\) \['CCC'\]"):
        MarketData.from_prices(p, volumes=p[["AAA", "BBB"]] * 1e4)


def test_missing_volumes_need_adv():
    r = returns_frame()
    with pytest.raises(DataError, match="has no volumes: give an average-daily-volume"):
        build(r, adv=None)
    with pytest.raises(DataError, match="adv must be a positive"):
        build(r, adv=-5.0)


# ---------------------------------------------------------------- select / slice / history
def test_select_unknown_tickers():
    with pytest.raises(DataError, match=r"unknown ticker\(s\) \['ZZZ'\].*available"):
        build().select(["AAA", "ZZZ"])


def test_select_keeps_order_and_frames():
    p = make_prices()
    data = MarketData.from_prices(p, volumes=p * 1e4)
    sub = data.select(["CCC", "AAA"])
    assert sub.tickers == ["CCC", "AAA"]
    assert list(sub.volumes.columns) == ["CCC", "AAA"] and list(sub.prices.columns) == [
        "CCC",
        "AAA",
    ]


def test_slice_is_inclusive_and_checks_length():
    data = build()
    sub = data.slice("2021-01-05", "2021-01-08")
    assert list(sub.calendar.strftime("%m-%d")) == ["01-05", "01-06", "01-07", "01-08"]
    with pytest.raises(DataError, match=r"leaves 1 period\(s\)"):
        data.slice("2021-01-05", "2021-01-05")


def test_require_history():
    data = build()
    data.require_history(len(data.calendar))
    with pytest.raises(
        DataError,
        match=r"has 29 periods \(2021-01-04 to 2021-02-11\), but the "
        "lookback need 100",
    ):
        data.require_history(100, "the lookback")


def test_too_short_returns_rejected():
    r = returns_frame().iloc[:1]
    with pytest.raises(DataError, match="at least 2 dates"):
        build(r, cash_return=pd.Series(0.0, index=r.index))


# ---------------------------------------------------------------- gap policy
def test_short_gap_filled_with_zero_return(caplog):
    p = make_prices()
    p.iloc[10:12, 1] = np.nan
    with caplog.at_level(logging.INFO, logger="mpo.data.market"):
        data = MarketData.from_prices(p, adv=1e8, max_ffill=2)
    assert "forward-filled 2" in caplog.text
    r = data.returns["BBB"]
    assert r.iloc[9] == 0 and r.iloc[10] == 0
    assert r.iloc[11] == pytest.approx(p.iloc[12, 1] / p.iloc[9, 1] - 1)
    assert data.prices.iloc[10, 1] == p.iloc[9, 1]


def test_long_gap_names_ticker_and_start():
    p = make_prices()
    p.iloc[10:13, 2] = np.nan
    with pytest.raises(
        DataError,
        match=r"'CCC' has more than 2 consecutive missing periods "
        r"starting 2021-01-18.*max_gap",
    ):
        MarketData.from_prices(p, adv=1e8, max_ffill=2)


def test_leading_nans_trimmed(caplog):
    p = make_prices()
    p.iloc[:3, 0] = np.nan
    with caplog.at_level(logging.INFO, logger="mpo.data.market"):
        data = MarketData.from_prices(p, adv=1e8)
    assert data.calendar[0] == p.index[3]
    assert "dropped 3 leading date(s)" in caplog.text


def test_trailing_gap_filled():
    p = make_prices()
    p.iloc[-2:, 0] = np.nan
    filled = forward_fill_gaps(p, max_gap=2)
    assert (filled.iloc[-2:, 0] == p.iloc[-3, 0]).all()


def test_empty_ticker_rejected():
    p = make_prices()
    p["DEAD"] = np.nan
    with pytest.raises(DataError, match=r"no data at all for ticker\(s\) \['DEAD'\]"):
        forward_fill_gaps(p)


def test_negative_max_gap_rejected():
    with pytest.raises(ValueError, match="max_gap must be >= 0"):
        forward_fill_gaps(make_prices(), max_gap=-1)


def test_volume_gaps_follow_price_policy():
    p = make_prices()
    vols = p * 1e4
    vols.iloc[5, 0] = np.nan
    vols.iloc[6, 0] = 0.0
    data = MarketData.from_prices(p, volumes=vols)
    assert data.volumes.iloc[5, 0] == data.volumes.iloc[6, 0] == vols.iloc[4, 0]


def test_volumes_in_shares_converted_to_dollars():
    p = make_prices()
    shares = pd.DataFrame(1000.0, index=p.index, columns=p.columns)
    data = MarketData.from_prices(p, volumes=shares, volumes_in_shares=True)
    np.testing.assert_allclose(data.volumes.to_numpy(), 1000 * p.iloc[:-1].to_numpy())


# ---------------------------------------------------------------- fingerprint etc.
def test_fingerprint_stable_and_sensitive():
    a, b = build(), build()
    assert a.fingerprint() == b.fingerprint() and len(a.fingerprint()) == 16
    r = returns_frame()
    r.iloc[7, 2] += 1e-12
    assert build(r).fingerprint() != a.fingerprint()
    assert build(adv=2e8).fingerprint() != a.fingerprint()
    assert build(returns_frame().rename(columns={"AAA": "AAB"})).fingerprint() != a.fingerprint()
    shifted = returns_frame()
    shifted.index = shifted.index + pd.Timedelta(days=1)
    cash = pd.Series(0.0, index=shifted.index)
    assert build(shifted, cash_return=cash).fingerprint() != a.fingerprint()


def test_returns_with_cash_and_cvxportfolio():
    data = MarketData.from_prices(make_prices(), cash_return=1e-4, adv=1e8)
    wide = data.returns_with_cash()
    assert list(wide.columns)[-1] == "cash" and (wide["cash"] == 1e-4).all()
    md = data.to_cvxportfolio(min_history_periods=5)
    assert list(md.returns.columns)[-1] == "cash"
    assert data.describe()["volumes"].startswith("volumes: ASSUMED constant")


# ---------------------------------------------------------------- fixed bugs (regressions)
def test_fingerprint_independent_of_datetime_unit():
    r = returns_frame()
    prints = set()
    for unit in ("us", "ns"):
        r2 = r.copy()
        r2.index = r2.index.as_unit(unit)
        prints.add(build(r2, cash_return=pd.Series(0.0, index=r2.index)).fingerprint())
    assert len(prints) == 1


def test_non_numeric_price_names_ticker_and_date():
    p = make_prices().astype(object)
    p.iloc[3, 1] = "n/a"
    with pytest.raises(DataError, match=r"'BBB'.*2021-01-07"):
        MarketData.from_prices(p, adv=1e8)


def test_negative_volume_rejected_in_from_prices():
    p = make_prices()
    vols = p * 1e4
    vols.iloc[5, 0] = -1.0
    with pytest.raises(DataError, match=r"'AAA'"):
        MarketData.from_prices(p, volumes=vols)
