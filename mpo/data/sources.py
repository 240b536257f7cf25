"""One entry point from a source name to :class:`MarketData`, used by the CLI and the specs.

Sources live in the registry :data:`DATA_SOURCES`, one callable per scheme; a
source name is ``SCHEME`` or ``SCHEME:ARGUMENT`` and the argument (what follows
the first colon) is handed to the source. Built-in sources:

``sp20``
    20 S&P 500 stocks 1990-2022, bundled with skfolio (needs ``adv``).
``dow30-2014``
    Dow 30 returns and volumes of 2014, bundled with cvxportfolio (registered
    as ``dow30_2014``: dashes in a scheme are read as underscores).
``synthetic``
    Factor-model market with known structure (``seed``, ``n_assets``, ``n_periods``).
``files:DIR``
    The user's wide files in directory ``DIR`` (see :mod:`mpo.data.files`).
``yfinance``, ``yf:TICKERS``
    Yahoo Finance through the on-disk cache (needs tickers, from ``tickers`` or
    after the colon, ``yf:AAPL,MSFT``, and ``start``).

A package adds a source through the entry-point group ``mpo.data_sources``::

    [project.entry-points."mpo.data_sources"]
    my_market = "my_package.data:load_my_market"

where ``load_my_market(argument, *, tickers, start, end, adv, seed, cache_dir,
n_assets, n_periods, **kwargs)`` returns a :class:`MarketData` (see
:class:`DataSource`); ``--data my_market`` then works everywhere.
"""

from __future__ import annotations

import dataclasses
import difflib
import logging
import os
from collections.abc import Callable, Sequence
from typing import Protocol

import pandas as pd

from mpo.data.bundled import load_dow30_2014, load_sp20
from mpo.data.dates import DEFAULT_MAX_DATE_GAP, check_date_gaps
from mpo.data.files import load_files
from mpo.data.market import MarketData, check_price_spikes, warn_stale_prices
from mpo.data.synthetic import make_synthetic
from mpo.data.yahoo import load_yfinance
from mpo.errors import DataError
from mpo.registry import Registry

__all__ = [
    "DATA_SOURCES",
    "SOURCES",
    "DataSource",
    "data_source",
    "load_market_data",
    "parse_source",
    "source_names",
]

logger = logging.getLogger(__name__)


class DataSource(Protocol):
    """The signature of a registered source.

    ``argument`` is what follows the colon of ``SCHEME:ARGUMENT`` (``None``
    without a colon). The keywords are those of :func:`load_market_data`; a
    source uses the ones it needs and must accept (and ignore) the others,
    including future ones (``**kwargs``). Selection of ``tickers`` and slicing
    to ``[start, end]`` are applied afterwards by :func:`load_market_data`, so
    a source may ignore them.
    """

    def __call__(
        self,
        argument: str | None,
        *,
        tickers: Sequence[str] | None,
        start: str | pd.Timestamp | None,
        end: str | pd.Timestamp | None,
        adv: float | None,
        seed: int,
        cache_dir: str | os.PathLike[str] | None,
        n_assets: int | None,
        n_periods: int | None,
        **kwargs,
    ) -> MarketData: ...


#: Source schemes by name; third-party sources join through the entry-point group.
DATA_SOURCES: Registry[DataSource] = Registry("data source", "mpo.data_sources")

#: Other spellings of registered schemes.
_ALIASES = {"yf": "yfinance"}

#: Registration order of the built-in sources (before any plugin).
_BUILT_IN: list[str] = []

#: Calendar days downloaded after ``end`` so that the return of the period at ``end`` is known.
_YF_END_PADDING = pd.Timedelta(days=10)


def data_source(name: str, *, usage: str | None = None) -> Callable[[DataSource], DataSource]:
    """Register a built-in source under ``name``.

    Parameters
    ----------
    name
        The registry key (letters, digits, underscores).
    usage
        How a user writes it, for messages and :data:`SOURCES` (``"files:DIR"``);
        default ``name``.
    """

    def decorator(fn: DataSource) -> DataSource:
        fn.usage = usage or name  # type: ignore[attr-defined]
        DATA_SOURCES.register(name, fn)
        _BUILT_IN.append(name)
        return fn

    return decorator


def _usage(name: str, source: DataSource) -> str:
    return getattr(source, "usage", name)


def _no_argument(usage: str, argument: str | None) -> None:
    if argument is not None:
        raise DataError(
            f"source {usage!r} takes nothing after a colon, got {usage}:{argument}; "
            f"write --data {usage}."
        )


@data_source("sp20")
def _sp20(argument: str | None, *, adv: float | None = None, **_) -> MarketData:
    _no_argument("sp20", argument)
    return load_sp20(adv=adv)


@data_source("dow30_2014", usage="dow30-2014")
def _dow30_2014(argument: str | None, *, adv: float | None = None, **_) -> MarketData:
    _no_argument("dow30-2014", argument)
    return load_dow30_2014(adv=adv)


@data_source("synthetic")
def _synthetic(
    argument: str | None,
    *,
    adv: float | None = None,
    seed: int = 0,
    n_assets: int | None = None,
    n_periods: int | None = None,
    **_,
) -> MarketData:
    _no_argument("synthetic", argument)
    extra = {} if adv is None else {"adv": adv}
    return make_synthetic(
        n_assets=20 if n_assets is None else n_assets,
        n_periods=1500 if n_periods is None else n_periods,
        seed=seed,
        **extra,
    )


@data_source("files", usage="files:DIR")
def _files(argument: str | None, *, adv: float | None = None, **_) -> MarketData:
    directory = (argument or "").strip()
    if not directory:
        raise DataError("source 'files:' needs a directory, e.g. 'files:data/my_market'.")
    return load_files(directory, adv=adv)


@data_source("yfinance")
def _yfinance(
    argument: str | None,
    *,
    tickers: Sequence[str] | None = None,
    start: str | pd.Timestamp | None = None,
    end: str | pd.Timestamp | None = None,
    cache_dir: str | os.PathLike[str] | None = None,
    **_,
) -> MarketData:
    if argument is not None:
        tickers = [t.strip() for t in argument.split(",") if t.strip()]
    if not tickers:
        raise DataError(
            "source 'yfinance' needs tickers, e.g. tickers=['AAPL', 'MSFT'] (--tickers AAPL,MSFT "
            "or --data yf:AAPL,MSFT)."
        )
    if start is None:
        raise DataError("source 'yfinance' needs a start date, e.g. start='2015-01-01'.")
    # end is inclusive here, like MarketData.slice: download the price after it too
    stop = None if end is None else pd.Timestamp(end) + _YF_END_PADDING
    return load_yfinance(tickers, start, stop, cache_dir=cache_dir)


#: How the built-in sources are written (``files:`` takes a directory after the colon).
SOURCES: tuple[str, ...] = tuple(_usage(n, DATA_SOURCES.get(n)) for n in _BUILT_IN)


def parse_source(source: str) -> tuple[str, str | None]:
    """Split a source name into its registry key and argument.

    ``"files:data/x"`` -> ``("files", "data/x")``; ``"yf:AAPL,MSFT"`` ->
    ``("yfinance", "AAPL,MSFT")``; ``"dow30-2014"`` -> ``("dow30_2014", None)``.
    """
    if not isinstance(source, str):
        raise DataError(f"source must be a string, got {type(source).__name__}.")
    scheme, colon, argument = source.strip().partition(":")
    scheme = scheme.strip()
    key = _ALIASES.get(scheme, scheme).replace("-", "_")
    return key, (argument if colon else None)


def source_names() -> list[str]:
    """How every registered source is written, plugins included, then the aliases."""
    names = [_usage(name, source) for name, source in DATA_SOURCES.items()]
    aliases = [
        f"{alias}:TICKERS" if key == "yfinance" else alias for alias, key in _ALIASES.items()
    ]
    return names + aliases


def _unknown(source: str) -> DataError:
    names = source_names()
    close = difflib.get_close_matches(source.strip(), names, n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    return DataError(
        f"unknown data source {source!r}; valid sources: {', '.join(names)} (files:DIR with "
        f"your own directory).{hint} Packages add sources through the entry-point group "
        f"{DATA_SOURCES.group!r}."
    )


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
    max_jump: float | None = 5.0,
    max_date_gap: float | None = DEFAULT_MAX_DATE_GAP,
) -> MarketData:
    """Load market data by source name, then select ``tickers`` and the dates ``[start, end]``.

    Parameters
    ----------
    source
        ``SCHEME`` or ``SCHEME:ARGUMENT``: one of :func:`source_names`, e.g.
        ``sp20``, ``dow30-2014``, ``synthetic``, ``files:DIR``, ``yfinance``,
        ``yf:AAPL,MSFT`` or a plugin's source.
    tickers
        Sub-universe, in this order (required for ``yfinance`` without tickers
        after the colon); an unknown ticker raises :class:`~mpo.errors.DataError`.
    start, end
        Inclusive date bounds on the returns' dates (``start`` required for ``yfinance``).
    adv
        Assumed average daily dollar volume per asset: required by ``sp20`` and
        by ``files:`` without a volumes file; the volume level of ``synthetic``.
    seed, n_assets, n_periods
        For ``synthetic`` (defaults 0, 20 and 1500).
    cache_dir
        For ``yfinance`` (default ``data/cache/yfinance``).
    max_jump
        Price-sanity check (:func:`mpo.data.market.check_price_spikes`): a
        one-period move by more than this factor that reverses the next period
        is an error naming ticker and date; ``None`` disables it (the spec's
        ``[data] max_jump``).
    max_date_gap
        Calendar check (:func:`mpo.data.dates.check_date_gaps`): a step between
        consecutive dates of more than this many times their median spacing (10
        calendar days for daily data) is an error naming the dates; ``None``
        disables it (the spec's ``[data] max_date_gap``).

    Returns
    -------
    MarketData

    Raises
    ------
    DataError
        Unknown source (the message lists the registered ones), bad argument,
        unknown ticker, empty date range.
    mpo.registry.RegistryError
        An installed plugin's entry point fails to import (the message names it).
    """
    key, argument = parse_source(source)
    if key not in DATA_SOURCES:
        raise _unknown(source)
    data = DATA_SOURCES.get(key)(
        argument,
        tickers=tickers,
        start=start,
        end=end,
        adv=adv,
        seed=seed,
        cache_dir=cache_dir,
        n_assets=n_assets,
        n_periods=n_periods,
    )
    if not isinstance(data, MarketData):
        raise DataError(
            f"data source {source!r} ({DATA_SOURCES.get(key)!r}) returned "
            f"{type(data).__name__}, not MarketData; fix the source's loader."
        )
    if tickers is not None and list(data.tickers) != list(tickers):
        data = data.select(list(tickers))
    full = data.calendar
    if start is not None or end is not None:
        data = data.slice(start, end)
    if max_date_gap is not None:
        # the last return of a window runs to the next date of the data: check that step too
        last = full.get_loc(data.calendar[-1])
        check_date_gaps(full[full.get_loc(data.calendar[0]) : last + 2], max_date_gap, data.name)
    if max_jump is not None:
        check_price_spikes(data, max_jump)
    if data.prices is not None:
        stale = warn_stale_prices(data.prices, data.name)
        if stale:
            data = dataclasses.replace(data, notes=(*data.notes, *stale))
    logger.info(
        "loaded %s: %d assets, %s to %s.",
        data.name,
        data.n_assets,
        data.calendar[0].date(),
        data.calendar[-1].date(),
    )
    return data
