"""Data hardening (issue 15): date gaps, non-daily lookbacks, DST timestamps, offline downloads.

No test touches the network: yfinance.download is replaced by a function that
refuses, and downloads go through recorded responses (tests/fixtures/yfinance)
or the recorded log of a real offline yfinance call (tests/fixtures/hardening).
"""

from __future__ import annotations

import errno
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yfinance
from typer.testing import CliRunner

import mpo.data.yahoo as yahoo
from mpo.cli import app
from mpo.config import parse_spec
from mpo.data import failures
from mpo.data.bundled import load_sp20
from mpo.data.dates import check_date_gaps, frequency, local_dates
from mpo.data.files import load_files, read_wide
from mpo.data.sources import load_market_data
from mpo.data.yahoo import download_prices, parse_download
from mpo.errors import DataError, DownloadError, SpecError
from mpo.policies import base as policy_base
from mpo.policies.base import build_policy, lookback_note

FIXTURES = Path(__file__).resolve().parent / "fixtures"
HARDENING = FIXTURES / "hardening"
HOLD = str(Path(__file__).resolve().parents[1] / "policies" / "hold.toml")


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a test called the real yfinance.download (network)")

    monkeypatch.setattr(yfinance, "download", refuse)


@pytest.fixture(scope="module")
def sp20_prices() -> pd.DataFrame:
    return load_sp20(adv=1e8).prices


def _files(tmp_path: Path, prices: pd.DataFrame, name: str = "d") -> Path:
    folder = tmp_path / name
    folder.mkdir()
    prices.to_csv(folder / "prices.csv")
    return folder


# ============================================================== 1. gaps between dates
def test_a_five_week_hole_in_daily_data_is_an_error_naming_dates_and_days(tmp_path, sp20_prices):
    prices = sp20_prices.loc["2019-06":"2020-12", ["AAPL", "AMD"]]
    holed = prices.drop(prices.loc["2020-03-02":"2020-04-03"].index)
    source = f"files:{_files(tmp_path, holed)}"
    with pytest.raises(DataError) as info:
        load_market_data(source, adv=1e8)
    message = str(info.value)
    assert "1 gap(s)" in message and "2020-02-28 to 2020-04-06 (38 days)" in message
    assert "median spacing of 1 calendar day (10 calendar days)" in message
    assert "[data] max_date_gap" in message
    # the explicit overrides accept it
    assert len(load_market_data(source, adv=1e8, max_date_gap=None).calendar) == len(holed) - 1
    load_market_data(source, adv=1e8, max_date_gap=40.0)


def test_the_first_gaps_are_named_and_all_are_counted(sp20_prices):
    idx = sp20_prices.loc["2010":"2012"].index
    holes = [("2010-03", "2010-04"), ("2010-09", "2010-09"), ("2011-05", "2011-05")]
    holes.append(("2012-01", "2012-01"))
    keep = np.ones(len(idx), dtype=bool)
    for lo, hi in holes:
        keep &= ~((idx >= pd.Timestamp(lo)) & (idx <= pd.Timestamp(hi) + pd.offsets.MonthEnd(0)))
    with pytest.raises(DataError, match=r"has 4 gap\(s\).*and 1 more\. ") as info:
        check_date_gaps(idx[keep], name="x")
    assert "2010-02-26 to 2010-05-03 (66 days)" in str(info.value)
    assert "2012-01" not in str(info.value)  # only the first three are named


def test_market_closures_and_the_bundled_data_pass_the_default(sp20_prices):
    # 9/11: the market closed for four business days (a 7-day step)
    around = sp20_prices.loc["2001-08":"2001-10"].index
    assert (around[1:] - around[:-1]).max() == pd.Timedelta(days=7)
    check_date_gaps(around)
    for name in ("sp20", "dow30-2014", "synthetic"):
        load_market_data(name, adv=1e8)  # max_date_gap = 10 by default


def test_gaps_scale_with_the_median_spacing_of_weekly_data():
    weeks = pd.date_range("2015-01-02", "2020-12-25", freq="W-FRI")
    check_date_gaps(weeks.delete(slice(100, 105)))  # a 6-week step: 42 < 70 days
    with pytest.raises(DataError, match=r"median spacing of 7 calendar days \(70 calendar days\)"):
        check_date_gaps(weeks.delete(slice(100, 112)), name="weekly")


def test_the_override_is_validated():
    weeks = pd.date_range("2015-01-02", periods=50, freq="W-FRI")
    for bad in (0.5, 1.0, float("inf"), float("nan")):
        with pytest.raises(DataError, match="max_date_gap must be a factor > 1"):
            check_date_gaps(weeks, bad)
    assert (
        parse_spec({"name": "h", "kind": "hold", "data": {"max_date_gap": 0}}).data.max_date_gap
        == 0
    )
    with pytest.raises(SpecError, match="max_date_gap"):
        parse_spec({"name": "h", "kind": "hold", "data": {"max_date_gap": -1}})


def test_cli_refuses_a_gap_in_one_clear_message(tmp_path, sp20_prices):
    prices = sp20_prices.loc["2019-01":"2020-12", ["AAPL", "AMD"]]
    folder = _files(tmp_path, prices.drop(prices.loc["2020-03-02":"2020-04-03"].index))
    args = ["backtest", HOLD, "--data", f"files:{folder}", "--adv", "1e8", "--no-report",
            "--no-progress", "--out", str(tmp_path / "o")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "2020-02-28 to 2020-04-06 (38 days)" in result.output
    assert "Traceback" not in result.output


def test_cli_max_date_gap_override_from_the_spec(tmp_path, sp20_prices):
    prices = sp20_prices.loc["2019-01":"2020-12", ["AAPL", "AMD"]]
    folder = _files(tmp_path, prices.drop(prices.loc["2020-03-02":"2020-04-03"].index))
    spec = tmp_path / "h.toml"
    spec.write_text('name = "hold"\nkind = "hold"\n[data]\nmax_date_gap = 0\n')
    args = ["backtest", str(spec), "--data", f"files:{folder}", "--adv", "1e8", "--no-report",
            "--no-progress", "--out", str(tmp_path / "o")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output


# ============================================================== 2. non-daily lookbacks
@pytest.fixture
def fresh_warnings():
    policy_base._warn_once.cache_clear()
    yield
    policy_base._warn_once.cache_clear()


WEEKS = pd.date_range("2010-01-01", "2019-12-27", freq="W-FRI")


def _notes(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "lookbacks count periods" in r.getMessage()]


def test_weekly_data_warn_what_each_lookback_means_in_years(caplog, fresh_warnings):
    spec = parse_spec({"name": "mpo-w", "kind": "mpo", "risk": {"lookback": 260}})
    with caplog.at_level(logging.WARNING, logger="mpo.policies.base"):
        build_policy(spec, ["A", "B"], WEEKS, data_name="files:w")
    (note,) = _notes(caplog)
    assert "policy 'mpo-w': data 'files:w' are weekly (52 periods per year" in note
    assert "[forecast] lookback = 504 periods spans 9.7 years" in note
    assert "[risk] lookback = 260 periods spans 5.0 years" in note
    assert "the policy needs 505 periods (9.7 years)" in note
    assert "[forecast] halflife" not in note  # rolling_mean does not read it


def test_the_note_names_what_the_forecast_kind_reads_and_monthly_data():
    spec = parse_spec({"name": "e", "kind": "spo", "forecast": {"kind": "ewma_mean"}})
    months = pd.date_range("2000-01-31", "2020-12-31", freq="ME")
    note = lookback_note(spec, months)
    assert "monthly (12 periods per year" in note
    assert "[forecast] halflife = 126 periods spans 10.5 years" in note
    assert "[forecast] lookback" not in note
    assert "[risk] lookback = 504 periods spans 42.0 years" in note


def test_daily_data_and_the_hold_reference_get_no_note(sp20_prices):
    spec = parse_spec({"name": "m", "kind": "mpo"})
    assert lookback_note(spec, sp20_prices.index[-600:]) is None
    assert lookback_note(parse_spec({"name": "h", "kind": "hold"}), WEEKS) is None
    assert frequency(sp20_prices.index).is_daily


def test_the_note_comes_once_per_policy_not_once_per_tuning_trial(caplog, fresh_warnings):
    spec = parse_spec({"name": "m", "kind": "mpo"})
    with caplog.at_level(logging.WARNING, logger="mpo.policies.base"):
        for gamma in (0.1, 1.0, 10.0):  # what each tuning trial builds
            build_policy(spec.with_updates(objective={"gamma_risk": gamma}), ["A", "B"], WEEKS)
        assert len(_notes(caplog)) == 1
        build_policy(parse_spec({"name": "other", "kind": "mpo"}), ["A", "B"], WEEKS)
    assert len(_notes(caplog)) == 2


# ============================================================== 3. DST timestamps
DST_DAYS = ["2020-03-06", "2020-03-09", "2020-10-30", "2020-11-02"]


@pytest.mark.parametrize("name", ["dst_prices.csv", "dst_prices.parquet"])
def test_files_across_both_dst_changes_give_exchange_local_days(tmp_path, name, sp20_prices):
    folder = tmp_path / "d"
    folder.mkdir()
    suffix = Path(name).suffix
    (folder / f"prices{suffix}").write_bytes((HARDENING / name).read_bytes())
    market = load_files(folder, adv=1e8)
    cal = market.calendar
    assert cal.tz is None and (cal == cal.normalize()).all()
    assert set(pd.DatetimeIndex(DST_DAYS)) <= set(cal)
    expected = sp20_prices.loc[cal, market.tickers]
    np.testing.assert_allclose(market.prices.to_numpy(), expected.to_numpy(), rtol=1e-12, atol=0)
    load_market_data(f"files:{folder}", adv=1e8)  # and every check passes


def test_mixed_offsets_naive_dates_and_far_east_offsets(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text(
        "Date,AAA\n2020-03-06 00:00:00-05:00,1.0\n2020-03-09 00:00:00-04:00,1.1\n"
        "2020-03-10,1.2\n2020-03-11 00:00:00+09:00,1.3\n"
    )
    got = read_wide(path).index
    assert list(got) == list(
        pd.DatetimeIndex(["2020-03-06", "2020-03-09", "2020-03-10", "2020-03-11"])
    )
    assert got.tz is None


def test_two_timestamps_on_one_local_day_are_an_error_naming_it(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text(
        "Date,AAA\n2020-03-06 00:00:00-05:00,1.0\n2020-03-09 00:00:00-04:00,1.1\n"
        "2020-03-09 00:00:00-05:00,1.1\n"
    )
    with pytest.raises(DataError, match=r"prices.csv: 1 date\(s\) repeat.*first 2020-03-09 from"):
        read_wide(path)


def test_a_bad_date_among_tz_aware_ones_is_named(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("Date,AAA\n2020-03-06 00:00:00-05:00,1.0\n2020-03-32 00:00:00-04:00,1.1\n")
    with pytest.raises(
        DataError, match=r"cannot parse the date '2020-03-32 00:00:00-04:00' on data row 2"
    ):
        read_wide(path)


def test_utc_instants_that_are_not_midnight_are_read_with_a_warning(caplog):
    stamps = pd.DatetimeIndex(["2020-03-06 05:00", "2020-03-09 04:00"], tz="UTC")
    with caplog.at_level(logging.WARNING, logger="mpo.data.dates"):
        got = local_dates(stamps, "p.parquet")
    assert list(got) == list(pd.DatetimeIndex(["2020-03-06", "2020-03-09"]))
    assert "p.parquet: 2 tz-aware timestamp(s) are not at midnight" in caplog.text


def _recorded(name: str) -> pd.DataFrame:
    return pd.read_parquet(FIXTURES / "yfinance" / f"{name}.parquet")


def test_parse_download_with_a_dst_change_in_a_tz_aware_or_mixed_offset_index():
    frame = _recorded("multi")
    naive = frame.index
    aware = frame.copy()
    aware.index = naive.tz_localize("America/New_York")  # spans 2022-03-13
    mixed = frame.copy()
    mixed.index = pd.Index([pd.Timestamp(t.isoformat()) for t in aware.index], dtype=object)
    assert len({t.utcoffset() for t in mixed.index}) == 2
    for variant in (aware, mixed):
        ok, failed = parse_download(variant, ["AAPL", "MSFT", "JPM"])
        assert failed == []
        for ticker, block in ok.items():
            assert block.index.tz is None
            assert block.index.equals(parse_download(frame, [ticker])[0][ticker].index)


def test_parse_download_refuses_two_bars_on_one_day():
    frame = _recorded("single").iloc[:5]
    stamps = list(frame.index.tz_localize("America/New_York"))
    stamps[3] = stamps[2] + pd.Timedelta(hours=16)  # a second bar of the same day
    frame.index = pd.DatetimeIndex(stamps)
    day = stamps[2].date()
    with pytest.raises(DataError, match=rf"yfinance AAPL: 1 date\(s\) repeat.*first {day}"):
        parse_download(frame, ["AAPL"])


# ============================================================== 4. network failures
START, END = "2022-01-03", "2022-04-30"


def _history() -> dict[str, pd.DataFrame]:
    long = pd.read_parquet(FIXTURES / "yfinance" / "history.parquet")
    out = {}
    for ticker, rows in long.groupby("Ticker", sort=False):
        frame = rows.drop(columns="Ticker").set_index("Date")
        frame.index = pd.DatetimeIndex(frame.index, name="Date")
        out[str(ticker)] = frame
    return out


class Yahoo:
    """``_call_yfinance`` answering from the recorded histories, or failing as told."""

    def __init__(self):
        self.history = _history()
        self.calls: list[tuple] = []
        self.error: Exception | None = None

    def __call__(self, tickers, start, end, threads):
        self.calls.append((tuple(tickers), start.date(), end.date()))
        if self.error is not None:
            raise self.error
        blocks = {}
        for t in tickers:
            rows = self.history[t]
            blocks[t] = rows[(rows.index >= start) & (rows.index < end)]
        data = pd.concat(blocks.values(), axis=1, keys=blocks.keys(), names=["Ticker", "Price"])
        data.columns = data.columns.swaplevel(0, 1)
        return data.sort_index(level=0, axis=1)


@pytest.fixture
def net(monkeypatch) -> Yahoo:
    fake = Yahoo()
    monkeypatch.setattr(yahoo, "_call_yfinance", fake)
    return fake


def _get(tickers, end=END, **kwargs):
    kwargs.setdefault("sleep", lambda s: None)
    return download_prices(tickers, START, end, **kwargs)


def _dns_error():
    from curl_cffi.requests.exceptions import DNSError

    return DNSError("Failed to perform, curl: (6) Could not resolve host: query2.finance.yahoo.com")


def test_a_covered_range_makes_no_network_call(net, tmp_path):
    first = _get(["AAPL", "MSFT"], cache_dir=tmp_path)
    net.error = AssertionError("no network call expected")
    again = _get(["AAPL", "MSFT"], cache_dir=tmp_path)
    assert len(net.calls) == 1
    pd.testing.assert_frame_equal(again.prices, first.prices)
    _get(["AAPL"], end="2022-03-01", cache_dir=tmp_path)  # a sub-range too
    assert len(net.calls) == 1


def test_a_failed_refresh_uses_the_covering_cache_with_a_warning(net, tmp_path, caplog):
    net.history["AAPL"] = net.history["AAPL"].loc[:"2022-03-01"]
    first = _get(["AAPL"], end=None, cache_dir=tmp_path, today="2022-03-01")
    net.error = _dns_error()
    with caplog.at_level(logging.WARNING, logger="mpo.data.yahoo"):
        again = _get(["AAPL"], end=None, cache_dir=tmp_path, today="2022-03-01", retries=1)
    assert len(net.calls) == 3  # the refresh of today's bar was tried (and retried)
    pd.testing.assert_frame_equal(again.prices, first.prices)
    text = caplog.text
    assert "refreshing AAPL failed: network unreachable (DNSError: Failed to perform" in text
    assert "using its cached data up to 2022-03-01" in text


def test_network_down_without_a_covering_cache_says_so(net, tmp_path):
    _get(["AAPL"], end="2022-03-01", cache_dir=tmp_path)
    net.error = _dns_error()
    with pytest.raises(DownloadError) as info:
        _get(["AAPL", "MSFT"], cache_dir=tmp_path, retries=1)
    message = str(info.value)
    assert info.value.failed_tickers == ("AAPL", "MSFT")
    assert message.startswith("yfinance: the network is unreachable for 2 ticker(s)")
    assert "AAPL: network unreachable (DNSError: Failed to perform, curl: (6)" in message
    assert "AAPL is cached from 2022-01-03 to 2022-02-28, MSFT has no cache" in message
    assert "refresh=False" in message and "delisted" not in message


class LoggingYahoo:
    """``yfinance.download`` as 1.7 behaves offline: it logs the errors and returns no rows."""

    def __init__(self, messages):
        self.messages = messages

    def __call__(self, tickers, **kwargs):
        log = logging.getLogger("yfinance")
        for message in self.messages:
            log.error(message)
        return _recorded("total_failure")


def test_the_recorded_offline_yfinance_log_is_read_as_network_unreachable(monkeypatch, tmp_path):
    messages = json.loads((HARDENING / "yfinance_offline_log.json").read_text())
    monkeypatch.setattr(yfinance, "download", LoggingYahoo(messages))
    with pytest.raises(DownloadError) as info:
        _get(["AAPL", "MSFT"], cache_dir=tmp_path, retries=0)
    message = str(info.value)
    assert "the network is unreachable" in message
    assert "MSFT: network unreachable (DNSError: Failed to perform, curl: (6) Could not" in message
    assert "Check the internet connection" in message and "no data returned" not in message


def test_no_data_and_rate_limits_are_told_apart(monkeypatch, tmp_path):
    monkeypatch.setattr(yfinance, "download", LoggingYahoo([]))
    with pytest.raises(DownloadError, match=r"ZZZZ: no data returned for the symbol \(unknown"):
        _get(["ZZZZ"], cache_dir=tmp_path, retries=0)
    limited = ["['AAPL']: YFRateLimitError('Too Many Requests. Rate limited. Try after a while.')"]
    monkeypatch.setattr(yfinance, "download", LoggingYahoo(limited))
    with pytest.raises(DownloadError, match=r"AAPL: rate limited by Yahoo \(YFRateLimitError"):
        _get(["AAPL"], cache_dir=tmp_path, retries=0)
    missing = ["['ZZZZ']: YFPricesMissingError('possibly delisted; no price data found')"]
    monkeypatch.setattr(yfinance, "download", LoggingYahoo(missing))
    with pytest.raises(DownloadError, match=r"no data returned for the symbol \(YFPricesMissing"):
        _get(["ZZZZ"], cache_dir=tmp_path, retries=0)


def test_exceptions_are_classified():
    import requests
    from curl_cffi.requests.exceptions import ReadTimeout

    network = [
        requests.exceptions.ConnectionError("Max retries exceeded"),
        ReadTimeout("Operation timed out after 10001 milliseconds"),
        ConnectionResetError("reset by peer"),
        OSError(errno.ENETUNREACH, "Network is unreachable"),
        _dns_error(),
    ]
    for exc in network:
        assert failures.from_exception(exc).kind == "network", exc
    assert failures.from_exception(KeyError("chart")).kind == "error"
    assert str(failures.from_exception(KeyError("chart"))) == "KeyError: 'chart'"


def test_a_dst_aware_download_is_cached_as_local_days(monkeypatch, net, tmp_path):
    def aware(tickers, start, end, threads):
        frame = Yahoo.__call__(net, tickers, start, end, threads)
        frame.index = frame.index.tz_localize("America/New_York")
        return frame

    monkeypatch.setattr(yahoo, "_call_yfinance", aware)
    got = _get(["AAPL"], cache_dir=tmp_path)
    expected = net.history["AAPL"].loc[START:END, "Close"]
    assert got.prices.index.equals(pd.DatetimeIndex(expected.index, name="Date"))
    assert {"2022-03-11", "2022-03-14"} <= {str(d.date()) for d in got.prices.index}


def test_the_step_after_a_window_end_is_checked_too(tmp_path, sp20_prices):
    """The last return of a window runs to the next date of the data."""
    prices = sp20_prices.loc["2019-06":"2020-12", ["AAPL", "AMD"]]
    holed = prices.drop(prices.loc["2020-03-02":"2020-04-03"].index)
    source = f"files:{_files(tmp_path, holed)}"
    with pytest.raises(DataError, match=r"2020-02-28 to 2020-04-06 \(38 days\)"):
        load_market_data(source, adv=1e8, end="2020-02-28")
    load_market_data(source, adv=1e8, end="2020-02-27")
    load_market_data(source, adv=1e8, start="2020-04-06")


def test_forecast_files_with_mixed_utc_offsets_read_as_local_days(tmp_path):
    """A forecast file saved across a DST change (-05:00 then -04:00) reads as its own days."""
    from mpo.forecast.tables import read_table

    path = tmp_path / "f.csv"
    path.write_text(
        "date,AAPL,MSFT\n2020-03-06 00:00:00-05:00,0.1,0.2\n2020-03-09 00:00:00-04:00,0.3,0.4\n"
    )
    table = read_table(path, what="forecast")
    assert list(table.index) == [pd.Timestamp("2020-03-06"), pd.Timestamp("2020-03-09")]
    assert table.index.name == "date"
    assert table.loc["2020-03-09", "MSFT"] == 0.4
