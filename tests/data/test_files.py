"""The user's own wide files: happy paths and every specific error."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpo.data import load_files, read_wide, returns_from_prices
from mpo.errors import DataError

from .conftest import make_prices


@pytest.fixture
def prices() -> pd.DataFrame:
    return make_prices(n=20)


def write(directory, name, frame, fmt="csv"):
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path)
    else:
        frame.to_parquet(path)
    return path


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_prices_and_volumes(tmp_path, prices, fmt):
    write(tmp_path, "prices", prices, fmt)
    write(tmp_path, "volumes", prices * 1e5, fmt)
    data = load_files(tmp_path)
    assert data.name == f"files:{tmp_path.name}" and data.tickers == ["AAA", "BBB", "CCC"]
    np.testing.assert_allclose(data.returns.to_numpy(), returns_from_prices(prices).to_numpy())
    np.testing.assert_allclose(data.volumes.to_numpy(), (prices * 1e5).iloc[:-1].to_numpy())
    assert (data.cash_return == 0).all()


def test_returns_with_cash_and_adv(tmp_path, prices):
    returns = returns_from_prices(prices)
    write(tmp_path, "returns", returns)
    write(tmp_path, "cash", pd.DataFrame({"rate": 1e-4}, index=returns.index))
    data = load_files(tmp_path, adv=5e7)
    assert data.prices is None and data.volumes is None and data.adv == 5e7
    assert (data.cash_return == 1e-4).all()
    np.testing.assert_allclose(data.returns.to_numpy(), returns.to_numpy())


def test_prices_with_cash_and_short_gap(tmp_path, prices):
    prices.iloc[5, 0] = np.nan
    write(tmp_path, "prices", prices)
    write(tmp_path, "cash", pd.DataFrame({"cash": 2e-4}, index=prices.index))
    data = load_files(tmp_path, adv=1e8)
    assert data.returns.iloc[4, 0] == 0.0 and (data.cash_return == 2e-4).all()


def test_parquet_with_date_column(tmp_path, prices):
    write(tmp_path, "prices", prices.reset_index(), "parquet")
    assert load_files(tmp_path, adv=1e8).n_assets == 3


def test_missing_directory(tmp_path):
    with pytest.raises(DataError, match=r"data directory .*nowhere does not exist"):
        load_files(tmp_path / "nowhere")


def test_missing_prices_and_returns(tmp_path, prices):
    write(tmp_path, "volumes", prices)
    with pytest.raises(
        DataError, match=r"no prices.csv/.parquet or returns.*found \['volumes.csv'\]"
    ):
        load_files(tmp_path)


def test_both_prices_and_returns(tmp_path, prices):
    write(tmp_path, "prices", prices)
    write(tmp_path, "returns", returns_from_prices(prices))
    with pytest.raises(DataError, match="has both prices.csv and returns.csv"):
        load_files(tmp_path, adv=1e8)


def test_both_csv_and_parquet(tmp_path, prices):
    write(tmp_path, "prices", prices, "csv")
    write(tmp_path, "prices", prices, "parquet")
    with pytest.raises(DataError, match="both prices.csv and prices.parquet"):
        load_files(tmp_path, adv=1e8)


def test_no_volumes_needs_adv(tmp_path, prices):
    write(tmp_path, "prices", prices)
    with pytest.raises(DataError, match="no volumes.csv/.parquet.*set adv"):
        load_files(tmp_path)


def test_unparseable_date_named(tmp_path, prices):
    path = write(tmp_path, "prices", prices)
    text = path.read_text().replace("2021-01-08", "2021-01-32")
    path.write_text(text)
    with pytest.raises(
        DataError, match=r"prices.csv: cannot parse the date '2021-01-32' on data row 5"
    ):
        load_files(tmp_path, adv=1e8)


def test_non_numeric_cell_named(tmp_path, prices):
    frame = prices.astype(object)
    frame.iloc[3, 1] = "12,5"
    write(tmp_path, "prices", frame)
    with pytest.raises(
        DataError,
        match=r"prices.csv: non-numeric value '12,5' for ticker 'BBB' on "
        r"2021-01-07",
    ):
        load_files(tmp_path, adv=1e8)


def test_misaligned_tickers_named(tmp_path, prices):
    write(tmp_path, "prices", prices)
    write(tmp_path, "volumes", prices.rename(columns={"CCC": "DDD"}) * 1e5)
    with pytest.raises(
        DataError,
        match=r"only in volumes.csv: \['DDD'\], only in prices.csv: "
        r"\['CCC'\]",
    ):
        load_files(tmp_path)


def test_volumes_in_other_column_order_are_reordered(tmp_path, prices):
    write(tmp_path, "prices", prices)
    write(tmp_path, "volumes", (prices * 1e5)[["CCC", "AAA", "BBB"]])
    data = load_files(tmp_path)
    np.testing.assert_allclose(data.volumes["AAA"].to_numpy(), (prices["AAA"] * 1e5).iloc[:-1])


def test_cash_with_two_columns(tmp_path, prices):
    returns = returns_from_prices(prices)
    write(tmp_path, "returns", returns)
    write(tmp_path, "cash", pd.DataFrame({"a": 0.0, "b": 0.0}, index=returns.index))
    with pytest.raises(DataError, match="cash.csv must have one column"):
        load_files(tmp_path, adv=1e8)


def test_cash_missing_dates(tmp_path, prices):
    returns = returns_from_prices(prices)
    write(tmp_path, "returns", returns)
    write(tmp_path, "cash", pd.DataFrame({"cash": 0.0}, index=returns.index[1:]))
    with pytest.raises(DataError, match="cash.csv has no cash return for 2021-01-04"):
        load_files(tmp_path, adv=1e8)


def test_nan_in_returns_named(tmp_path, prices):
    returns = returns_from_prices(prices)
    returns.iloc[6, 2] = np.nan
    write(tmp_path, "returns", returns)
    with pytest.raises(DataError, match=r"NaN for ticker 'CCC' on 2021-01-12"):
        load_files(tmp_path, adv=1e8)


def test_duplicate_dates_in_file(tmp_path, prices):
    write(tmp_path, "prices", pd.concat([prices.iloc[:3], prices.iloc[2:]]))
    with pytest.raises(DataError, match=r"duplicate date\(s\), first 2021-01-06"):
        load_files(tmp_path, adv=1e8)


def test_empty_file(tmp_path):
    path = tmp_path / "prices.csv"
    path.write_text("Date,AAA\n")
    with pytest.raises(DataError, match="prices.csv is empty"):
        read_wide(path)


def test_read_wide_missing_file(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        read_wide(tmp_path / "prices.csv")
