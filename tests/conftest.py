"""Shared fixtures: small real markets (skfolio's S&P 500 prices) and spec factories."""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np
import pandas as pd
import pytest
from spec_helpers import TIGHT, spec_dict  # noqa: F401  (re-exported for the tests)

from mpo.config import parse_spec
from mpo.data.market import MarketData

TICKERS = ["AAPL", "JNJ", "JPM", "KO", "MSFT", "PG", "WMT", "XOM"]


def _sp_prices() -> pd.DataFrame:
    from skfolio.datasets import load_sp500_dataset

    return load_sp500_dataset()


@pytest.fixture(scope="session")
def sp_prices() -> pd.DataFrame:
    return _sp_prices()


def make_market(prices: pd.DataFrame, seed: int = 0, cash: float = 0.0) -> MarketData:
    """Real prices plus seeded synthetic dollar volumes (so the impact term varies)."""
    rng = np.random.default_rng(seed)
    vol = pd.DataFrame(
        np.exp(rng.normal(np.log(5e7), 0.4, size=prices.shape)),
        index=prices.index,
        columns=prices.columns,
    )
    return MarketData.from_prices(prices, vol, cash_return=cash, name="test")


@pytest.fixture(scope="session")
def market(sp_prices) -> MarketData:
    """8 real stocks, 2017-01 to 2018-06 (~370 periods), synthetic volumes, 1 bp/day cash."""
    return make_market(sp_prices.loc["2017-01-01":"2018-06-30", TICKERS], cash=1e-4)


@pytest.fixture(scope="session")
def make_spec():
    def _make(kind: str = "spo", **sections):
        return parse_spec(spec_dict(kind, **sections))

    return _make
