"""The load_market_data dispatcher used by the CLI: the source registry and its plugins."""

from __future__ import annotations

from importlib import metadata

import pandas as pd
import pytest
from plugins.fixtures import broken_plugin, example_plugin  # noqa: F401  (fixtures)

from mpo.data import SOURCES, load_market_data, make_synthetic, returns_from_prices
from mpo.data.sources import DATA_SOURCES, parse_source, source_names
from mpo.errors import DataError, DownloadError
from mpo.registry import RegistryError

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


@pytest.mark.parametrize(
    "source, parsed",
    [
        ("sp20", ("sp20", None)),
        (" dow30-2014 ", ("dow30_2014", None)),
        ("files:data/my market", ("files", "data/my market")),
        ("files:C:/data", ("files", "C:/data")),
        ("files:", ("files", "")),
        ("yf:AAPL,MSFT", ("yfinance", "AAPL,MSFT")),
        ("yfinance", ("yfinance", None)),
    ],
)
def test_parse_source_scheme_and_argument(source, parsed):
    assert parse_source(source) == parsed


def test_every_builtin_is_registered_and_listed():
    assert set(DATA_SOURCES.names()) >= {"sp20", "dow30_2014", "synthetic", "files", "yfinance"}
    assert source_names()[: len(SOURCES)] == list(SOURCES)
    assert "yf:TICKERS" in source_names()


def test_dashed_and_underscored_names_are_the_same_source():
    a = load_market_data("dow30-2014", end="2014-03-31")
    b = load_market_data("dow30_2014", end="2014-03-31")
    assert a.fingerprint() == b.fingerprint()


def test_sources_without_argument_reject_one():
    with pytest.raises(DataError, match=r"'sp20' takes nothing after a colon.*--data sp20"):
        load_market_data("sp20:1990", adv=1e9)


def test_unknown_source_suggests_a_close_name():
    with pytest.raises(DataError, match=r"Did you mean 'synthetic'\?.*mpo\.data_sources"):
        load_market_data("synthetc")


def test_a_registered_source_gets_the_argument_and_the_options():
    calls = []

    def source(argument, *, seed, n_assets, **kwargs):
        calls.append((argument, seed, n_assets, kwargs["adv"]))
        return make_synthetic(n_assets=3, n_periods=50, seed=seed)

    DATA_SOURCES.register("test_scheme", source)
    try:
        data = load_market_data("test_scheme:a:b", seed=3, n_assets=3, adv=2e7, tickers=["S01"])
    finally:
        DATA_SOURCES.unregister("test_scheme")
    assert calls == [("a:b", 3, 3, 2e7)]
    assert data.tickers == ["S01"]  # selection applied after the source
    assert "test_scheme" not in DATA_SOURCES


def test_a_source_must_return_market_data():
    DATA_SOURCES.register("test_bad_source", lambda argument, **kw: pd.DataFrame())
    try:
        with pytest.raises(
            DataError, match=r"'test_bad_source'.*returned DataFrame, not MarketData"
        ):
            load_market_data("test_bad_source")
    finally:
        DATA_SOURCES.unregister("test_bad_source")


def test_yf_alias_takes_the_tickers_after_the_colon(fake_yahoo, cache_dir):
    data = load_market_data(
        "yf:MSFT,AAPL", start="2022-01-03", end="2022-03-31", cache_dir=cache_dir
    )
    assert data.name == "yfinance" and data.tickers == ["MSFT", "AAPL"]
    assert data.calendar[-1] == pd.Timestamp("2022-03-31")


# ------------------------------------------------------------------ plugins (entry points)
def test_plugin_source_loads_through_its_entry_point(example_plugin):  # noqa: F811
    assert "example_market" in DATA_SOURCES.names() and "example_market" in source_names()
    assert SOURCES == ("sp20", "dow30-2014", "synthetic", "files:DIR", "yfinance")  # built-ins
    data = load_market_data("example_market")
    assert data.name == "example_market" and data.returns.shape == (400, 4)
    assert load_market_data("example_market").fingerprint() == data.fingerprint()  # fixed seed
    part = load_market_data("example_market", tickers=data.tickers[2:], start="2015-03-02")
    assert part.tickers == data.tickers[2:] and part.calendar[0] == pd.Timestamp("2015-03-02")
    with pytest.raises(DataError, match="takes no argument"):
        load_market_data("example_market:x")


def test_plugin_declares_a_policy_kind(example_plugin):  # noqa: F811
    (ep,) = [e for e in metadata.entry_points(group="mpo.policies") if e.name == "example_kind"]
    assert ep.value == "mpo_example_plugin:ExamplePolicyKind"
    assert ep.dist.name == "mpo-example-plugin"
    kind = ep.load()
    assert isinstance(kind, type) and "example_kind" in kind.__doc__


def test_plugin_that_fails_to_import_names_its_entry_point(broken_plugin):  # noqa: F811
    with pytest.raises(
        RegistryError,
        match=r"data source plugin 'broken_market' \(mpo_broken_plugin:load, entry-point group "
        r"'mpo\.data_sources'\) failed to load: ModuleNotFoundError.*mpo_missing_dependency",
    ):
        DATA_SOURCES.load_entry_points(force=True)
