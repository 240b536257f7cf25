"""Price sanity: a bad tick (a spike that reverses) is an error naming ticker and date."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from mpo.cli import app
from mpo.data.bundled import load_sp20
from mpo.data.market import MarketData, check_price_spikes, warn_stale_prices
from mpo.data.sources import load_market_data
from mpo.errors import DataError

HOLD = str(Path(__file__).parents[2] / "policies" / "hold.toml")


def _spiked(factor: float = 1000.0):
    prices = load_sp20(adv=1e8).prices.iloc[-300:, :4].copy()
    day = prices.index[150]
    prices.loc[day, "BAC"] *= factor
    return prices, day


def test_a_1000x_spike_names_ticker_and_date():
    prices, day = _spiked()
    market = MarketData.from_prices(prices, adv=1e8)
    with pytest.raises(DataError, match=rf"'BAC'.*{day.date()}"):
        check_price_spikes(market)
    check_price_spikes(market, factor=5000.0)  # a larger factor accepts it


def test_real_moves_pass_and_bundled_data_is_clean():
    for name in ("sp20", "dow30-2014"):
        load_market_data(name, adv=1e8)  # max_jump = 5 by default


def test_cli_refuses_the_spike_and_max_jump_overrides(tmp_path):
    prices, day = _spiked()
    (tmp_path / "d").mkdir()
    prices.to_csv(tmp_path / "d" / "prices.csv")
    args = ["backtest", HOLD, "--data", f"files:{tmp_path / 'd'}", "--adv", "1e8", "--no-report",
            "--no-progress", "--out", str(tmp_path / "o")]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "price spike in 'BAC'" in result.output, result.output
    spec = tmp_path / "h.toml"
    spec.write_text('name = "hold"\nkind = "hold"\n[data]\nmax_jump = 0\n')
    result = CliRunner().invoke(app, [*args[:1], str(spec), *args[2:]])
    assert result.exit_code == 0, result.output


def test_a_repeated_ticker_column_in_a_csv_is_an_error(tmp_path):
    prices = load_sp20(adv=1e8).prices.iloc[-100:, :3]
    frame = prices.copy()
    frame.columns = ["AAPL", "AMD", "AAPL"]
    (tmp_path / "d").mkdir()
    frame.to_csv(tmp_path / "d" / "prices.csv")
    with pytest.raises(DataError, match=r"repeats ticker column\(s\) \['AAPL'\]"):
        load_market_data(f"files:{tmp_path / 'd'}", adv=1e8)


def test_a_repeated_ticker_column_in_a_parquet_file_is_an_error(tmp_path):
    """pandas refuses to write one, other tools do not: the schema is checked before reading,
    and names that only differ by spaces ('AMD' and ' AMD') count as the same ticker."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    prices = load_sp20(adv=1e8).prices.iloc[-100:, :3]
    (tmp_path / "d").mkdir()
    cols = [pa.array(prices.index), *(pa.array(prices.iloc[:, i]) for i in range(3))]
    pq.write_table(
        pa.table(cols, names=["Date", "AAPL", "AMD", "AAPL"]), tmp_path / "d" / "prices.parquet"
    )
    with pytest.raises(DataError, match=r"prices.parquet repeats ticker column\(s\) \['AAPL'\]"):
        load_market_data(f"files:{tmp_path / 'd'}", adv=1e8)
    pq.write_table(
        pa.table(cols, names=["Date", "AAPL", "AMD", " AMD"]), tmp_path / "d" / "prices.parquet"
    )
    with pytest.raises(DataError, match=r"repeats ticker column\(s\) \['AMD'\]"):
        load_market_data(f"files:{tmp_path / 'd'}", adv=1e8)


def test_a_stale_price_column_is_reported_with_its_dates(caplog):
    prices = load_sp20(adv=1e8).prices.iloc[-200:, :3].copy()
    prices.iloc[50:80, 1] = prices.iloc[50, 1]
    with caplog.at_level("WARNING", logger="mpo.data.market"):
        notes = warn_stale_prices(prices, "t")
    ticker = prices.columns[1]
    assert any(f"{ticker!r} is unchanged for 29 periods" in n for n in notes)
    assert str(prices.index[50].date()) in caplog.text
    assert warn_stale_prices(load_sp20(adv=1e8).prices.loc["2016":], "sp20") == []
