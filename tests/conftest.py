"""Shared fixtures: small real markets (skfolio's S&P 500 prices) and spec factories."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import pandas as pd
import pytest
from spec_helpers import TIGHT, make_market, spec_dict  # noqa: F401  (re-exported)

from mpo.config import parse_spec
from mpo.data.market import MarketData

TICKERS = ["AAPL", "JNJ", "JPM", "KO", "MSFT", "PG", "WMT", "XOM"]


def _sp_prices() -> pd.DataFrame:
    from skfolio.datasets import load_sp500_dataset

    return load_sp500_dataset()


@pytest.fixture(scope="session")
def sp_prices() -> pd.DataFrame:
    return _sp_prices()


@pytest.fixture(scope="session")
def market(sp_prices) -> MarketData:
    """8 real stocks, 2017-01 to 2018-06 (~370 periods), synthetic volumes, 1 bp/day cash."""
    return make_market(sp_prices.loc["2017-01-01":"2018-06-30", TICKERS], cash=1e-4)


@pytest.fixture(scope="session")
def make_spec():
    def _make(kind: str = "spo", **sections):
        return parse_spec(spec_dict(kind, **sections))

    return _make
