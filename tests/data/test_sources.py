"""The load_market_data dispatcher used by the CLI."""

from __future__ import annotations

import pandas as pd
import pytest

from mpo.data import SOURCES, load_market_data, returns_from_prices
from mpo.errors import DataError, DownloadError

from .conftest import make_prices


def test_unknown_source_lists_valid_ones():
    with pytest.raises(
        DataError,
        match=r"unknown data source 'nasdaq'.*sp20, dow30-2014, "
        "synthetic, files:DIR, yfinance",
    ):
        load_market_data("nasdaq")


def test_sp20_with_selection_and_dates():
    data = load_market_data(
        "sp20", adv=1e9, tickers=["MSFT", "AAPL"], start="2020-01-02", end="2020-12-31"
    )
    assert data.tickers == ["MSFT", "AAPL"]
    assert data.calendar[0] == pd.Timestamp("2020-01-02")
    assert data.calendar[-1] == pd.Timestamp("2020-12-31")


def test_sp20_needs_adv():
    with pytest.raises(DataError, match="set adv"):
        load_market_data("sp20")


def test_unknown_ticker_in_selection():
    with pytest.raises(DataError, match=r"unknown ticker\(s\) \['NOPE'\]"):
        load_market_data("dow30-2014", tickers=["AAPL", "NOPE"])


def test_dow30():
    data = load_market_data("dow30-2014", end="2014-06-30")
    assert data.name == "dow30-2014" and data.calendar[-1] <= pd.Timestamp("2014-06-30")


def test_synthetic_sizes_seed_and_adv():
    a = load_market_data("synthetic", n_assets=4, n_periods=120, seed=1, adv=1e7)
    b = load_market_data("synthetic", n_assets=4, n_periods=120, seed=1, adv=1e7)
    assert a.returns.shape == (120, 4) and a.adv == 1e7
    assert a.fingerprint() == b.fingerprint()
    assert load_market_data("synthetic", n_assets=4, n_periods=120, seed=2).fingerprint() != (
        a.fingerprint()
    )


def test_files_source(tmp_path):
    prices = make_prices()
    prices.to_csv(tmp_path / "prices.csv")
    data = load_market_data(f"files:{tmp_path}", adv=1e8, tickers=["BBB"])
    pd.testing.assert_frame_equal(
        data.returns, returns_from_prices(prices)[["BBB"]], check_freq=False, check_names=False
    )


def test_files_source_needs_directory():
    with pytest.raises(DataError, match="needs a directory"):
        load_market_data("files:")


def test_yfinance_needs_tickers_and_start():
    with pytest.raises(DataError, match="needs tickers"):
        load_market_data("yfinance", start="2022-01-03")
    with pytest.raises(DataError, match="needs a start"):
        load_market_data("yfinance", tickers=["AAPL"])


def test_yfinance_through_fake(fake_yahoo, cache_dir):
    data = load_market_data(
        "yfinance",
        tickers=["MSFT", "AAPL"],
        start="2022-01-03",
        end="2022-03-31",
        cache_dir=cache_dir,
    )
    assert data.name == "yfinance" and data.tickers == ["MSFT", "AAPL"]
    # end is inclusive: the return of 2022-03-31 needs the next price, which was downloaded
    assert data.calendar[-1] == pd.Timestamp("2022-03-31")
    assert len(fake_yahoo.calls) == 1


def test_yfinance_failure_propagates(fake_yahoo, cache_dir, monkeypatch):
    fake_yahoo.fail(["AAPL"])
    monkeypatch.setattr("mpo.data.yahoo.time.sleep", lambda s: None)
    with pytest.raises(DownloadError, match="AAPL"):
        load_market_data("yfinance", tickers=["AAPL"], start="2022-01-03", cache_dir=cache_dir)


def test_sources_constant():
    assert SOURCES == ("sp20", "dow30-2014", "synthetic", "files:DIR", "yfinance")
