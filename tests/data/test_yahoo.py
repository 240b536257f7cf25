"""yfinance source: layout parsing, retries, cache and incremental refresh (no network)."""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
import yfinance

from mpo.data import MarketData, PriceCache, download_prices, load_yfinance, parse_download
from mpo.errors import DataError, DownloadError

from .conftest import SCENARIOS, FakeYahoo, NetworkDisabled, recorded, recorded_history

START, END = "2022-01-03", "2022-04-30"
GAP_DAYS = ("2022-02-15", "2022-02-16")


def get(tickers, start=START, end=END, *, cache_dir, sleeps=None, **kwargs):
    sleep = sleeps.append if sleeps is not None else lambda s: None
    return download_prices(tickers, start, end, cache_dir=cache_dir, sleep=sleep, **kwargs)


# ---------------------------------------------------------------- recorded layout
@pytest.mark.parametrize("name", SCENARIOS)
def test_recordings_have_yfinance_1x_layout(name):
    frame = recorded(name)
    assert isinstance(frame.columns, pd.MultiIndex)
    assert list(frame.columns.names) == ["Price", "Ticker"]
    assert isinstance(frame.index, pd.DatetimeIndex) and frame.index.tz is None
    if len(frame):
        assert frame.index.name == "Date"
    prices = list(frame.columns.get_level_values(0))
    assert prices == sorted(prices)
    assert {"Close", "High", "Low", "Open", "Volume"} <= set(prices)


def test_recorded_failures_have_stray_adj_close():
    failed = recorded("failed")
    assert ("Adj Close", "ZZZZ") in failed.columns
    assert failed.xs("ZZZZ", axis=1, level=1).isna().all().all()
    assert ("Adj Close", "MSFT") in recorded("rate_limited").columns
    total = recorded("total_failure")
    assert total.empty and ("Adj Close", "AAPL") in total.columns


def test_recorded_closes_are_real_skfolio_prices(sp500_prices):
    close = recorded("multi")["Close"]
    expected = sp500_prices.loc[close.index, close.columns]
    np.testing.assert_allclose(close.to_numpy(), expected.to_numpy(), rtol=1e-12)


@pytest.mark.parametrize(
    "name, tickers, failing, gap",
    [
        ("multi", ["AAPL", "MSFT", "JPM"], [], False),
        ("single", ["AAPL"], [], False),
        ("failed", ["AAPL", "MSFT", "ZZZZ"], [], False),
        ("rate_limited", ["AAPL", "MSFT"], ["MSFT"], False),
        ("gap", ["AAPL", "MSFT"], [], True),
        ("total_failure", ["AAPL", "MSFT"], ["AAPL", "MSFT"], False),
    ],
)
def test_fake_yahoo_reproduces_recordings(name, tickers, failing, gap):
    """The fake used below answers exactly what the real yfinance 1.7 returned."""
    fake = FakeYahoo(recorded_history())
    fake.fail(failing)
    if gap:
        fake.drop_days("MSFT", GAP_DAYS)
    got = fake(
        tickers,
        start=START,
        end=END,
        auto_adjust=True,
        progress=False,
        group_by="column",
        threads=False,
    )
    pd.testing.assert_frame_equal(got, recorded(name), check_index_type=bool(len(got)))


def test_no_network_guard_fails_loudly():
    with pytest.raises(NetworkDisabled, match="fake_yahoo"):
        yfinance.download(["AAPL"], start=START, end=END)


# ---------------------------------------------------------------- parse_download
def test_parse_multi():
    ok, failed = parse_download(recorded("multi"), ["AAPL", "MSFT", "JPM"])
    assert failed == [] and set(ok) == {"AAPL", "MSFT", "JPM"}
    assert list(ok["AAPL"].columns) == ["Open", "High", "Low", "Close", "Volume"]
    assert (ok["JPM"].dtypes == "float64").all()


def test_parse_single_ticker_multiindex():
    ok, failed = parse_download(recorded("single"), ["AAPL"])
    assert failed == [] and len(ok["AAPL"]) == len(recorded("single"))


@pytest.mark.parametrize(
    "name, tickers, bad",
    [
        ("failed", ["AAPL", "MSFT", "ZZZZ"], ["ZZZZ"]),
        ("rate_limited", ["AAPL", "MSFT"], ["MSFT"]),
        ("total_failure", ["AAPL", "MSFT"], ["AAPL", "MSFT"]),
    ],
)
def test_parse_detects_failed_tickers(name, tickers, bad):
    ok, failed = parse_download(recorded(name), tickers)
    assert failed == bad and set(ok) == set(tickers) - set(bad)


def test_parse_missing_ticker_counts_as_failed():
    _, failed = parse_download(recorded("multi"), ["AAPL", "NOPE"])
    assert failed == ["NOPE"]


def test_parse_gap_drops_rows_of_other_tickers():
    ok, _ = parse_download(recorded("gap"), ["AAPL", "MSFT"])
    assert len(ok["MSFT"]) == len(ok["AAPL"]) - 2
    assert not ok["MSFT"].index.isin(pd.DatetimeIndex(GAP_DAYS)).any()


def test_parse_rejects_flat_columns():
    flat = recorded("single").droplevel(1, axis=1)
    with pytest.raises(DownloadError, match="2-level") as info:
        parse_download(flat, ["AAPL"])
    assert info.value.failed_tickers == ("AAPL",)


# ---------------------------------------------------------------- download_prices
def test_download_multi_prices_and_dollar_volumes(fake_yahoo, cache_dir):
    got = get(["AAPL", "MSFT", "JPM"], cache_dir=cache_dir)
    raw = recorded("multi")
    assert list(got.prices.columns) == ["AAPL", "MSFT", "JPM"]
    pd.testing.assert_frame_equal(
        got.prices, raw["Close"][["AAPL", "MSFT", "JPM"]], check_names=False
    )
    expected = raw["Volume"] * raw["Close"]
    np.testing.assert_allclose(
        got.volumes.to_numpy(), expected[["AAPL", "MSFT", "JPM"]].to_numpy(), rtol=1e-12
    )
    assert len(fake_yahoo.calls) == 1
    assert fake_yahoo.calls[0] == (("AAPL", "MSFT", "JPM"), START, END)
    assert sorted(p.name for p in cache_dir.iterdir()) == [
        "AAPL.parquet",
        "JPM.parquet",
        "MSFT.parquet",
    ]


def test_second_call_is_served_from_cache(fake_yahoo, cache_dir):
    first = get(["AAPL", "MSFT"], cache_dir=cache_dir)
    second = get(["AAPL", "MSFT"], "2022-02-01", "2022-03-01", cache_dir=cache_dir)
    assert len(fake_yahoo.calls) == 1
    pd.testing.assert_frame_equal(second.prices, first.prices.loc["2022-02-01":"2022-02-28"])


def test_incremental_refresh_downloads_only_new_dates(fake_yahoo, cache_dir):
    get(["AAPL", "MSFT"], START, "2022-03-01", cache_dir=cache_dir)
    got = get(["AAPL", "MSFT"], START, END, cache_dir=cache_dir)
    assert len(fake_yahoo.calls) == 2
    # the last cached day (2022-02-28) is downloaded again to absorb revisions
    assert fake_yahoo.calls[1] == (("AAPL", "MSFT"), "2022-02-28", END)
    full = get(["AAPL", "MSFT"], cache_dir=cache_dir.parent / "fresh")
    pd.testing.assert_frame_equal(got.prices, full.prices)
    pd.testing.assert_frame_equal(got.volumes, full.volumes)


def test_incremental_refresh_absorbs_revision_of_last_day(fake_yahoo, cache_dir):
    get(["AAPL"], START, "2022-03-01", cache_dir=cache_dir)
    fake_yahoo.history["AAPL"].loc["2022-02-28", "Volume"] += 1_000_000
    got = get(["AAPL"], START, END, cache_dir=cache_dir)
    close, vol = (fake_yahoo.history["AAPL"].loc["2022-02-28", c] for c in ("Close", "Volume"))
    assert got.volumes.loc["2022-02-28", "AAPL"] == pytest.approx(close * vol)


def test_rebased_adjusted_history_is_downloaded_again(fake_yahoo, cache_dir):
    get(["AAPL", "MSFT"], START, "2022-03-01", cache_dir=cache_dir)
    fake_yahoo.rescale("AAPL", 0.99)  # a dividend rebases Yahoo's adjusted closes
    got = get(["AAPL", "MSFT"], START, END, cache_dir=cache_dir)
    assert fake_yahoo.calls[-1] == (("AAPL",), START, END)
    np.testing.assert_allclose(
        got.prices["AAPL"].to_numpy(), fake_yahoo.history["AAPL"]["Close"].to_numpy(), rtol=1e-12
    )
    assert len(fake_yahoo.calls) == 3


def test_head_backfill_downloads_only_earlier_dates(fake_yahoo, cache_dir):
    get(["AAPL"], "2022-02-01", END, cache_dir=cache_dir)
    got = get(["AAPL"], START, END, cache_dir=cache_dir)
    assert fake_yahoo.calls[1] == (("AAPL",), START, "2022-02-02")
    assert got.prices.index[0] == pd.Timestamp(START)
    assert len(got.prices) == len(recorded("single"))


def test_refresh_false_uses_cache_alone(fake_yahoo, cache_dir):
    get(["AAPL"], START, "2022-03-01", cache_dir=cache_dir)
    got = get(["AAPL"], START, END, cache_dir=cache_dir, refresh=False)
    assert len(fake_yahoo.calls) == 1
    assert got.prices.index[-1] == pd.Timestamp("2022-02-28")


def test_today_is_never_counted_as_cached(fake_yahoo, cache_dir):
    """Today's bar may still move: the next call downloads it again."""
    fake_yahoo.history["AAPL"] = fake_yahoo.history["AAPL"].loc[:"2022-03-01"]
    get(["AAPL"], START, END, cache_dir=cache_dir, today="2022-03-01")
    get(["AAPL"], START, END, cache_dir=cache_dir, today="2022-03-01")
    assert len(fake_yahoo.calls) == 2
    assert fake_yahoo.calls[1][1] == "2022-03-01"


def test_rate_limit_then_success(fake_yahoo, cache_dir, sleeps):
    fake_yahoo.fail(["MSFT"], times=2)
    got = get(["AAPL", "MSFT"], cache_dir=cache_dir, sleeps=sleeps, backoff=0.5)
    assert sleeps == [0.5, 1.0]
    assert [c[0] for c in fake_yahoo.calls] == [("AAPL", "MSFT"), ("MSFT",), ("MSFT",)]
    assert got.prices.notna().all().all()


def test_exception_from_yfinance_is_retried(fake_yahoo, cache_dir, sleeps):
    fake_yahoo.exceptions.append(ConnectionError("connection reset"))
    got = get(["AAPL"], cache_dir=cache_dir, sleeps=sleeps)
    assert sleeps == [1.0] and len(got.prices) == len(recorded("single"))


def test_total_failure_raises_download_error(fake_yahoo, cache_dir, sleeps):
    fake_yahoo.fail(["AAPL", "MSFT"])
    with pytest.raises(DownloadError) as info:
        get(["AAPL", "MSFT"], cache_dir=cache_dir, sleeps=sleeps, retries=3)
    assert info.value.failed_tickers == ("AAPL", "MSFT")
    message = str(info.value)
    assert "['AAPL', 'MSFT']" in message and "4 attempt" in message and "rate limited" in message
    assert sleeps == [1.0, 2.0, 4.0]
    assert len(fake_yahoo.calls) == 4
    assert not cache_dir.exists() or not any(cache_dir.iterdir())


def test_unknown_ticker_raises_naming_it_and_keeps_the_others(fake_yahoo, cache_dir):
    with pytest.raises(DownloadError, match="ZZZZ") as info:
        get(["AAPL", "ZZZZ"], cache_dir=cache_dir, retries=1)
    assert info.value.failed_tickers == ("ZZZZ",)
    assert "AAPL" not in str(info.value).split("ticker(s)")[1].split("between")[0]
    assert (cache_dir / "AAPL.parquet").exists() and not (cache_dir / "ZZZZ.parquet").exists()


def test_failed_download_loses_nothing_cached(fake_yahoo, cache_dir):
    get(["AAPL"], START, "2022-03-01", cache_dir=cache_dir)
    path = cache_dir / "AAPL.parquet"
    before = path.read_bytes()
    fake_yahoo.fail(["AAPL"])
    with pytest.raises(DownloadError, match="AAPL"):
        get(["AAPL"], START, END, cache_dir=cache_dir, retries=0)
    assert path.read_bytes() == before
    cached = PriceCache(cache_dir).read("AAPL")
    assert cached.frame.index[-1] == pd.Timestamp("2022-02-28")
    # and the cache still serves the old range offline
    assert len(get(["AAPL"], START, END, cache_dir=cache_dir, refresh=False).prices) == 39


def test_interrupted_cache_write_keeps_old_file(fake_yahoo, cache_dir, monkeypatch):
    get(["AAPL"], START, "2022-03-01", cache_dir=cache_dir)
    before = (cache_dir / "AAPL.parquet").read_bytes()

    def crash(src, dst):
        raise OSError("disk full")

    import mpo.io

    monkeypatch.setattr(mpo.io.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        get(["AAPL"], START, END, cache_dir=cache_dir)
    assert (cache_dir / "AAPL.parquet").read_bytes() == before
    assert [p.name for p in cache_dir.iterdir()] == ["AAPL.parquet"]  # no temp file left


def test_unreadable_cache_file_is_downloaded_again(fake_yahoo, cache_dir, caplog):
    cache_dir.mkdir()
    (cache_dir / "AAPL.parquet").write_bytes(b"not parquet")
    with caplog.at_level(logging.WARNING, logger="mpo.data.cache"):
        got = get(["AAPL"], cache_dir=cache_dir)
    assert "unreadable" in caplog.text and len(fake_yahoo.calls) == 1
    assert PriceCache(cache_dir).read("AAPL") is not None and len(got.prices) == 82


def test_cache_file_names_are_safe():
    store = PriceCache("x")
    assert store.path("^GSPC").name == "%5EGSPC.parquet"
    assert store.path("BRK/B").name == "BRK%2FB.parquet"


def test_ticker_string_is_normalized(fake_yahoo, cache_dir):
    got = get("aapl, msft", cache_dir=cache_dir)
    assert list(got.prices.columns) == ["AAPL", "MSFT"]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(tickers=[], start=START, end=END), "no tickers"),
        (dict(tickers=["AAPL"], start=END, end=START), "start must be before end"),
        (dict(tickers=["AAPL"], start="not a date", end=END), "cannot parse"),
        (dict(tickers=["AAPL"], start=START, end=END, retries=-1), "retries >= 0"),
    ],
)
def test_bad_arguments(kwargs, match, cache_dir):
    with pytest.raises(DataError, match=match):
        download_prices(cache_dir=cache_dir, **kwargs)


# ---------------------------------------------------------------- load_yfinance
def test_load_yfinance_builds_market_data(fake_yahoo, cache_dir):
    data = load_yfinance(["AAPL", "MSFT", "JPM"], START, END, cache_dir=cache_dir)
    assert isinstance(data, MarketData) and data.name == "yfinance"
    close = recorded("multi")["Close"][["AAPL", "MSFT", "JPM"]]
    expected = close.pct_change().shift(-1).iloc[:-1]
    np.testing.assert_allclose(data.returns.to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert data.volumes is not None and data.volume_note.startswith("volumes: observed")


def test_load_yfinance_fills_short_gap_with_zero_returns(fake_yahoo, cache_dir):
    fake_yahoo.drop_days("MSFT", GAP_DAYS)
    data = load_yfinance(["AAPL", "MSFT"], START, END, cache_dir=cache_dir)
    assert data.returns.loc["2022-02-14":"2022-02-15", "MSFT"].eq(0).all()
    assert data.returns.loc["2022-02-16", "MSFT"] != 0
    assert len(data.calendar) == 81


def test_load_yfinance_long_gap_raises(fake_yahoo, cache_dir):
    fake_yahoo.drop_days("MSFT", pd.bdate_range("2022-02-07", periods=8).strftime("%Y-%m-%d"))
    with pytest.raises(DataError, match=r"'MSFT' has more than 5 consecutive.*2022-02-07"):
        load_yfinance(["AAPL", "MSFT"], START, END, cache_dir=cache_dir, max_ffill=5)


def test_load_yfinance_unknown_ticker(fake_yahoo, cache_dir):
    with pytest.raises(DownloadError, match="ZZZZ"):
        load_yfinance(["AAPL", "ZZZZ"], START, END, cache_dir=cache_dir, retries=0)
