"""Shared fixtures of the data tests: no network, recorded yfinance responses, a fake Yahoo."""

from __future__ import annotations

import inspect
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yfinance
from yfinance.base import TickerBase
from yfinance.utils import empty_df

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "yfinance"
#: the genuine yfinance 1.7 function, captured before any test patches it
REAL_DOWNLOAD = yfinance.download
SCENARIOS = ("multi", "single", "failed", "rate_limited", "gap", "total_failure")


class NetworkDisabled(RuntimeError):
    """Raised by any real yfinance network call during the tests."""


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """Make every real yfinance download fail loudly: the tests never touch Yahoo."""

    def refuse(*args, **kwargs):
        raise NetworkDisabled(
            "a test called the real yfinance (network): use the fake_yahoo fixture instead."
        )

    monkeypatch.setattr(yfinance, "download", refuse)
    monkeypatch.setattr(TickerBase, "history", refuse)


def recorded(name: str) -> pd.DataFrame:
    """A recorded ``yfinance.download`` response (see make_fixtures.py)."""
    return pd.read_parquet(FIXTURES / f"{name}.parquet")


def recorded_history() -> dict[str, pd.DataFrame]:
    """Per-ticker OHLCV behind the recordings: index ``Date``, Volume int64."""
    long = pd.read_parquet(FIXTURES / "history.parquet")
    out = {}
    for ticker, rows in long.groupby("Ticker", sort=False):
        frame = rows.drop(columns="Ticker").set_index("Date")
        frame.index = pd.DatetimeIndex(frame.index, name="Date")
        out[str(ticker)] = frame
    return out


class FakeYahoo:
    """Stand-in for ``yfinance.download`` built from recorded per-ticker histories.

    It answers only the requested ``[start, end)`` dates, in the exact layout of
    yfinance 1.7 (checked against the recordings in test_yahoo.py), records the
    calls, and can make tickers fail (all-NaN + ``Adj Close`` columns) a number
    of times or for ever, or raise.
    """

    def __init__(self, history: dict[str, pd.DataFrame]):
        self.history = {t: f.copy() for t, f in history.items()}
        self.calls: list[tuple[tuple[str, ...], str, str]] = []
        self.failures: dict[str, float] = {}
        self.exceptions: list[Exception] = []

    def fail(self, tickers: Iterable[str], times: float = np.inf) -> None:
        for ticker in tickers:
            self.failures[ticker] = times

    def drop_days(self, ticker: str, days: Iterable[str]) -> None:
        self.history[ticker] = self.history[ticker].drop(pd.DatetimeIndex(list(days)))

    def rescale(self, ticker: str, factor: float) -> None:
        """Rebase the adjusted OHLC history, as Yahoo does after a dividend."""
        cols = ["Open", "High", "Low", "Close"]
        self.history[ticker][cols] = self.history[ticker][cols] * factor

    def _fails(self, ticker: str) -> bool:
        left = self.failures.get(ticker, 0)
        if left > 0:
            self.failures[ticker] = left - 1
            return True
        return False

    def __call__(self, tickers, start=None, end=None, **kwargs) -> pd.DataFrame:
        # the call must be valid for the real yfinance 1.7 signature
        inspect.signature(REAL_DOWNLOAD).bind(tickers, start=start, end=end, **kwargs)
        assert kwargs.get("auto_adjust") is True
        assert kwargs.get("group_by") == "column"
        assert kwargs.get("progress") is False
        self.calls.append((tuple(tickers), start, end))
        if self.exceptions:
            raise self.exceptions.pop(0)
        lo, hi = pd.Timestamp(start), pd.Timestamp(end)
        dfs = {}
        for ticker in dict.fromkeys(t.upper() for t in tickers):
            frame = self.history.get(ticker)
            rows = None if frame is None else frame[(frame.index >= lo) & (frame.index < hi)]
            if rows is None or rows.empty or self._fails(ticker):
                dfs[ticker] = empty_df()  # what yfinance stores for a failed ticker
            else:
                dfs[ticker] = rows.copy()
        # what yfinance.multi._download_impl does next
        idx = None
        for df in dfs.values():
            if not df.empty:
                idx = df.index if idx is None else idx.union(df.index)
        idx = pd.DatetimeIndex([]) if idx is None else idx
        dfs = {k: v.reindex(idx) for k, v in dfs.items()}
        data = pd.concat(
            dfs.values(), axis=1, sort=True, keys=dfs.keys(), names=["Ticker", "Price"]
        )
        data.columns = data.columns.swaplevel(0, 1)
        return data.sort_index(level=0, axis=1)


@pytest.fixture
def fake_yahoo(monkeypatch) -> FakeYahoo:
    """Install a :class:`FakeYahoo` as ``yfinance.download``."""
    fake = FakeYahoo(recorded_history())
    monkeypatch.setattr(yfinance, "download", fake)
    return fake


@pytest.fixture
def sleeps() -> list[float]:
    """Injectable sleep that records the backoff delays instead of waiting."""
    return []


@pytest.fixture
def cache_dir(tmp_path) -> Path:
    return tmp_path / "cache"


@pytest.fixture(scope="session")
def sp500_prices() -> pd.DataFrame:
    from skfolio.datasets import load_sp500_dataset

    return load_sp500_dataset()


def make_prices(n: int = 30, tickers=("AAA", "BBB", "CCC"), seed: int = 0) -> pd.DataFrame:
    """Small positive random-walk price panel on business days."""
    rng = np.random.default_rng(seed)
    steps = 1 + rng.normal(0.0005, 0.01, (n, len(tickers)))
    index = pd.bdate_range("2021-01-04", periods=n, name="Date")
    return pd.DataFrame(100 * np.cumprod(steps, axis=0), index=index, columns=list(tickers))
