"""Bundled offline data: skfolio's S&P 20 and cvxportfolio's Dow 30 (2014)."""

from __future__ import annotations

from importlib import resources

import numpy as np
import pandas as pd
import pytest

from mpo.data import load_dow30_2014, load_sp20
from mpo.errors import DataError


@pytest.fixture(scope="module")
def sp20():
    return load_sp20(adv=1e9)


def test_sp20_requires_adv():
    with pytest.raises(DataError, match=r"'sp20' has no volumes: set adv.*in the spec"):
        load_sp20()


def test_sp20_content(sp20, sp500_prices):
    assert sp20.name == "sp20" and sp20.n_assets == 20
    assert sp20.calendar[0] == pd.Timestamp("1990-01-02")
    assert sp20.calendar[-1] == sp500_prices.index[-2]  # last forward return is unknown
    expected = (sp500_prices.shift(-1) / sp500_prices - 1).iloc[:-1]
    np.testing.assert_allclose(sp20.returns.to_numpy(), expected.to_numpy(), rtol=1e-12)
    assert sp20.volumes is None and sp20.adv == 1e9
    assert (sp20.dollar_volumes == 1e9).all().all()
    assert "ASSUMED" in sp20.volume_note and any("adv" in n for n in sp20.notes)


def test_sp20_rejects_bad_adv():
    with pytest.raises(DataError, match="adv must be a positive"):
        load_sp20(adv=0.0)


def _csv(name: str) -> pd.DataFrame:
    with resources.as_file(resources.files("cvxportfolio.tests") / name) as path:
        return pd.read_csv(path, index_col=0, parse_dates=True)


def test_dow30_2014_content():
    data = load_dow30_2014()
    raw_r, raw_v = _csv("returns.csv"), _csv("volumes.csv")
    assert data.name == "dow30-2014" and data.prices is None
    assert data.tickers == list(raw_r.columns[:-1]) and "cash" not in data.tickers
    np.testing.assert_allclose(data.cash_return.to_numpy(), raw_r["cash"].to_numpy())
    np.testing.assert_allclose(data.returns.to_numpy(), raw_r.iloc[:, :-1].to_numpy())
    # volumes.csv has one more (earlier) date: aligned on the returns' dates
    assert len(raw_v) == len(raw_r) + 1
    assert data.volumes.index.equals(data.returns.index)
    np.testing.assert_allclose(
        data.volumes.to_numpy(), raw_v.loc[raw_r.index, data.tickers].to_numpy()
    )
    assert data.volume_note == "volumes: observed dollar volumes"


def test_dow30_to_cvxportfolio():
    md = load_dow30_2014().to_cvxportfolio()
    assert list(md.returns.columns)[-1] == "cash"
