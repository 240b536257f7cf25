"""One entry point from a source name to :class:`MarketData`, used by the CLI and the specs.

Sources:

``sp20``
    20 S&P 500 stocks 1990-2022, bundled with skfolio (needs ``adv``).
``dow30-2014``
    Dow 30 returns and volumes of 2014, bundled with cvxportfolio.
``synthetic``
    Factor-model market with known structure (``seed``, ``n_assets``, ``n_periods``).
``files:DIR``
    The user's wide files in directory ``DIR`` (see :mod:`mpo.data.files`).
``yfinance``
    Yahoo Finance through the on-disk cache (needs ``tickers`` and ``start``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

import pandas as pd

from mpo.data.bundled import load_dow30_2014, load_sp20
from mpo.data.files import load_files
from mpo.data.market import MarketData
from mpo.data.synthetic import make_synthetic
from mpo.data.yahoo import load_yfinance
from mpo.errors import DataError

__all__ = ["SOURCES", "load_market_data"]

logger = logging.getLogger(__name__)

#: Valid source names (``files:`` takes a directory after the colon).
SOURCES = ("sp20", "dow30-2014", "synthetic", "files:DIR", "yfinance")

#: Calendar days downloaded after ``end`` so that the return of the period at ``end`` is known.
_YF_END_PADDING = pd.Timedelta(days=10)


def _load_yfinance(
    tickers: Sequence[str] | None,
    start: str | pd.Timestamp | None,
    end: str | pd.Timestamp | None,
    cache_dir: str | os.PathLike[str] | None,
) -> MarketData:
    if not tickers:
        raise DataError(
            "source 'yfinance' needs tickers, e.g. tickers=['AAPL', 'MSFT'] (--tickers AAPL,MSFT)."
        )
    if start is None:
        raise DataError("source 'yfinance' needs a start date, e.g. start='2015-01-01'.")
    # end is inclusive here, like MarketData.slice: download the price after it too
    stop = None if end is None else pd.Timestamp(end) + _YF_END_PADDING
    return load_yfinance(tickers, start, stop, cache_dir=cache_dir)


def load_market_data(
    source: str,
    *,
    tickers: Sequence[str] | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    adv: float | None = None,
    seed: int = 0,
    cache_dir: str | os.PathLike[str] | None = None,
    n_assets: int | None = None,
    n_periods: int | None = None,
) -> MarketData:
    """Load market data by source name, then select ``tickers`` and the dates ``[start, end]``.

    Parameters
    ----------
    source
        One of ``sp20``, ``dow30-2014``, ``synthetic``, ``files:DIR``, ``yfinance``.
    tickers
        Sub-universe, in this order (required for ``yfinance``); an unknown
        ticker raises :class:`~mpo.errors.DataError`.
    start, end
        Inclusive date bounds on the returns' dates (``start`` required for ``yfinance``).
    adv
        Assumed average daily dollar volume per asset: required by ``sp20`` and
        by ``files:`` without a volumes file; the volume level of ``synthetic``.
    seed, n_assets, n_periods
        For ``synthetic`` (defaults 0, 20 and 1500).
    cache_dir
        For ``yfinance`` (default ``data/cache/yfinance``).

    Returns
    -------
    MarketData
    """
    if not isinstance(source, str):
        raise DataError(f"source must be a string, got {type(source).__name__}.")
    name = source.strip()
    if name == "yfinance":
        data = _load_yfinance(tickers, start, end, cache_dir)
    elif name == "sp20":
        data = load_sp20(adv=adv)
    elif name == "dow30-2014":
        data = load_dow30_2014(adv=adv)
    elif name == "synthetic":
        extra = {} if adv is None else {"adv": adv}
        data = make_synthetic(
            n_assets=20 if n_assets is None else n_assets,
            n_periods=1500 if n_periods is None else n_periods,
            seed=seed,
            **extra,
        )
    elif name.startswith("files:"):
        directory = name.removeprefix("files:").strip()
        if not directory:
            raise DataError("source 'files:' needs a directory, e.g. 'files:data/my_market'.")
        data = load_files(directory, adv=adv)
    else:
        raise DataError(
            f"unknown data source {source!r}; valid sources: {', '.join(SOURCES)} "
            "(files:DIR with your own directory)."
        )
    if tickers is not None and name != "yfinance":
        data = data.select(list(tickers))
    if start is not None or end is not None:
        data = data.slice(start, end)
    logger.info(
        "loaded %s: %d assets, %s to %s.",
        data.name,
        data.n_assets,
        data.calendar[0].date(),
        data.calendar[-1].date(),
    )
    return data
