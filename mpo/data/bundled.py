"""Real market data shipped inside installed packages: no network, the default sources.

* :func:`load_sp20`: daily prices of 20 S&P 500 stocks, 1990-01-02 to
  2022-12-28, bundled with skfolio (``skfolio.datasets.load_sp500_dataset``).
  It has no volumes, so an average-daily-dollar-volume assumption ``adv`` is
  required for the market-impact cost.
* :func:`load_dow30_2014`: returns (with a cash column) and dollar volumes of
  the Dow 30 in 2014, shipped as cvxportfolio's test data
  (``cvxportfolio/tests/returns.csv`` and ``volumes.csv``). It has no prices.
"""

from __future__ import annotations

import logging
from importlib import resources

import pandas as pd

from mpo.data.market import DEFAULT_MAX_FFILL, MarketData
from mpo.errors import DataError

__all__ = ["load_dow30_2014", "load_sp20"]

logger = logging.getLogger(__name__)

_CVXPORTFOLIO_DATA = "cvxportfolio.tests"


def load_sp20(
    adv: float | None = None,
    *,
    cash_return: float = 0.0,
    max_ffill: int = DEFAULT_MAX_FFILL,
) -> MarketData:
    """Daily prices of 20 S&P 500 stocks (1990-2022) bundled with skfolio.

    Parameters
    ----------
    adv
        Assumed average daily dollar volume per asset. Required: the dataset
        has no volumes and the market-impact term is never dropped silently.
    cash_return
        Constant per-period return of the cash account.
    max_ffill
        Gap policy of :meth:`MarketData.from_prices` (the dataset has no gaps).

    Returns
    -------
    MarketData
        ``name='sp20'``, prices and forward returns, ``volumes=None``.

    Raises
    ------
    DataError
        If ``adv`` is missing or not a positive number.
    """
    if adv is None:
        raise DataError(
            "data source 'sp20' has no volumes: set adv, an assumed average daily dollar "
            "volume per asset (e.g. adv = 1e9), in the spec's data section (or --adv on the "
            "command line) so the market-impact cost term can be charged."
        )
    from skfolio.datasets import load_sp500_dataset

    prices = load_sp500_dataset()
    prices.index = pd.DatetimeIndex(prices.index, name="Date")
    prices.columns = [str(c) for c in prices.columns]
    return MarketData.from_prices(
        prices,
        adv=float(adv),
        cash_return=cash_return,
        max_ffill=max_ffill,
        name="sp20",
        notes=(
            "prices: skfolio load_sp500_dataset (20 S&P 500 stocks, daily closes 1990-2022)",
            f"volumes: none in the data; ASSUMED constant adv=${float(adv):,.0f} per asset",
            f"cash: constant return {cash_return} per period",
        ),
    )


def _read_cvxportfolio_csv(name: str) -> pd.DataFrame:
    resource = resources.files(_CVXPORTFOLIO_DATA) / name
    with resources.as_file(resource) as path:
        if not path.exists():
            raise DataError(
                f"cvxportfolio's bundled {name} was not found at {path}; reinstall "
                "cvxportfolio (pip install --force-reinstall 'cvxportfolio>=1.5.1,<1.6')."
            )
        frame = pd.read_csv(path, index_col=0, parse_dates=True)
    frame.index = pd.DatetimeIndex(frame.index, name="Date")
    return frame.astype(float)


def load_dow30_2014(adv: float | None = None) -> MarketData:
    """The Dow 30 in 2014: cvxportfolio's bundled returns, cash returns and dollar volumes.

    ``returns.csv`` holds the forward returns of 28 stocks and a final ``cash``
    column (used as ``cash_return``); ``volumes.csv`` has one more date (the
    day before the first return), so volumes are aligned to the returns' dates.
    There are no prices (``prices=None``).

    Parameters
    ----------
    adv
        Stored on the result but unused: the data has observed volumes.

    Returns
    -------
    MarketData
        ``name='dow30-2014'``.
    """
    returns = _read_cvxportfolio_csv("returns.csv")
    volumes = _read_cvxportfolio_csv("volumes.csv")
    if returns.columns[-1] != "cash":
        raise DataError(
            "cvxportfolio's returns.csv no longer ends with a 'cash' column "
            f"(last column {returns.columns[-1]!r}); check the installed cvxportfolio version."
        )
    cash = returns.pop("cash")
    dropped = volumes.index.difference(returns.index)
    if len(dropped):
        logger.debug("dow30-2014: dropped volume dates not in returns: %s.", list(dropped.date))
    volumes = volumes.reindex(index=returns.index)
    missing = sorted(set(returns.columns) - set(volumes.columns))
    if missing:
        raise DataError(f"cvxportfolio's volumes.csv lacks ticker(s) {missing} of returns.csv.")
    return MarketData(
        returns=returns,
        cash_return=cash,
        prices=None,
        volumes=volumes[list(returns.columns)],
        adv=adv,
        name="dow30-2014",
        notes=(
            "returns, cash and dollar volumes: cvxportfolio's bundled test data (Dow 30, 2014)",
            "prices: none in the data",
        ),
    )
