"""Daily prices and dollar volumes from Yahoo Finance (yfinance 1.x), with an on-disk cache.

``yfinance.download`` does not raise when a ticker fails: an unknown, delisted
or rate-limited ticker comes back as all-NaN columns plus a stray
``('Adj Close', ticker)`` column (an empty frame if every ticker failed). This
module detects that, retries the failed tickers with exponential backoff, and
raises :class:`~mpo.errors.DownloadError` naming those that still fail.

Cache and refresh (see :mod:`mpo.data.cache`): one parquet file per ticker.
Only the dates the cache does not cover are downloaded; the last cached day is
downloaded again to absorb revisions. Prices are dividend/split adjusted
(``auto_adjust=True``), so a dividend paid after the cached range rescales the
whole adjusted history: when the re-downloaded overlap day disagrees with the
cached close, the ticker's full covered range is downloaded again. A failed
download never touches a ticker's cached file.

No network call is made when the cache covers the request. When a refresh
fails (network unreachable, rate limit, no data) for a ticker whose cache covers
the request up to today's still-moving bar, the cache serves it, with a warning
naming the failure and the last cached date; otherwise the error says whether
the network was unreachable or Yahoo returned no data (see
:mod:`mpo.data.failures`). Timestamps become exchange-local calendar days
(:func:`mpo.data.dates.local_dates`), across DST changes too.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd

from mpo.data import failures
from mpo.data.cache import COLUMNS, DEFAULT_CACHE_DIR, CachedHistory, PriceCache
from mpo.data.dates import local_dates
from mpo.data.market import DEFAULT_MAX_FFILL, MarketData
from mpo.errors import DataError, DownloadError, MpoError

__all__ = ["PriceVolume", "download_prices", "load_yfinance", "parse_download"]

logger = logging.getLogger(__name__)

_ONE_DAY = pd.Timedelta(days=1)


class PriceVolume(NamedTuple):
    """Wide daily Close prices and dollar volumes (``Volume * Close``), dates x tickers."""

    prices: pd.DataFrame
    volumes: pd.DataFrame


class _Fetch(NamedTuple):
    """One planned download: tickers sharing ``[start, end)``; ``replace`` drops the cache."""

    start: pd.Timestamp
    end: pd.Timestamp
    replace: bool


# --------------------------------------------------------------------------- inputs
def _normalize_tickers(tickers: str | Iterable[str]) -> list[str]:
    """Upper-case, stripped, de-duplicated tickers in the given order (as yfinance does)."""
    if isinstance(tickers, str):
        tickers = tickers.replace(",", " ").split()
    out: list[str] = []
    for ticker in tickers:
        if not isinstance(ticker, str) or not ticker.strip():
            raise DataError(f"tickers must be non-empty strings, got {ticker!r}.")
        symbol = ticker.strip().upper()
        if symbol not in out:
            out.append(symbol)
    if not out:
        raise DataError("no tickers given: pass e.g. tickers=['AAPL', 'MSFT'].")
    return out


def _resolve_range(
    start: str | pd.Timestamp, end: str | pd.Timestamp | None, today: pd.Timestamp
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """``[start, end)`` as normalized timestamps; ``end=None`` means up to and including today."""
    if start is None:
        raise DataError("start is required for yfinance downloads, e.g. start='2015-01-01'.")
    try:
        first = pd.Timestamp(start).normalize()
        last = today + _ONE_DAY if end is None else pd.Timestamp(end).normalize()
    except (ValueError, TypeError) as exc:
        raise DataError(
            f"cannot parse the date range {start=}, {end=}: {exc}. Use 'YYYY-MM-DD'."
        ) from exc
    if first.tz is not None or last.tz is not None:
        raise DataError(f"start and end must be tz-naive dates, got {start=}, {end=}.")
    if first >= last:
        raise DataError(f"start must be before end (end is exclusive), got {start=}, {end=}.")
    return first, last


# --------------------------------------------------------------------------- parsing
def parse_download(
    frame: pd.DataFrame, tickers: Sequence[str]
) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Split a ``yfinance.download(..., group_by='column')`` frame into per-ticker OHLCV.

    Parameters
    ----------
    frame
        yfinance 1.x layout: 2-level ``(Price, Ticker)`` columns (even for one
        ticker), ``Date`` index.
    tickers
        The tickers that were requested.

    Returns
    -------
    ok, failed
        ``ok[ticker]`` holds float columns ``Open, High, Low, Close, Volume``
        for the dates where Close is known (rows that are NaN only because
        another ticker traded that day are dropped). ``failed`` lists the tickers
        that came back missing, all-NaN, or with yfinance's stray ``Adj Close``
        failure column.
    """
    if not isinstance(frame, pd.DataFrame):
        raise DownloadError(
            f"yfinance.download returned {type(frame).__name__}, not a DataFrame; every "
            "ticker is treated as failed.",
            tuple(tickers),
        )
    columns = frame.columns
    if not isinstance(columns, pd.MultiIndex) or columns.nlevels != 2:
        raise DownloadError(
            "yfinance.download returned columns that are not the 2-level (Price, Ticker) "
            f"MultiIndex of yfinance 1.x (got {list(columns)[:4]}...). Check the installed "
            "yfinance version (mpo needs yfinance>=1.0,<2).",
            tuple(tickers),
        )
    fields = set(columns.get_level_values(0))
    present = set(columns.get_level_values(1))
    ok: dict[str, pd.DataFrame] = {}
    failed: list[str] = []
    for ticker in tickers:
        if ticker not in present or ("Adj Close", ticker) in columns:
            failed.append(ticker)
            continue
        missing = [c for c in COLUMNS if c not in fields]
        if missing:
            raise DownloadError(
                f"yfinance.download returned no {missing} column(s); it must be called with "
                "auto_adjust=True and group_by='column'.",
                tuple(tickers),
            )
        block = frame.xs(ticker, axis=1, level=1)[list(COLUMNS)].astype(float)
        block = block[block["Close"].notna()]
        if block.empty:
            failed.append(ticker)
            continue
        index = block.index
        block.index = local_dates(
            index if isinstance(index, pd.DatetimeIndex) else list(index), f"yfinance {ticker}"
        )
        ok[ticker] = block.sort_index()
    return ok, failed


# --------------------------------------------------------------------------- network
#: ``frame.attrs`` key of the errors yfinance logged per ticker during the call.
_LOGGED = "yfinance_errors"


def _call_yfinance(
    tickers: list[str], start: pd.Timestamp, end: pd.Timestamp, threads: bool | int
) -> pd.DataFrame:
    """The one place that calls the network; the errors yfinance logged go in ``attrs``."""
    import yfinance

    with failures.YahooErrorLog() as log:
        frame = yfinance.download(
            tickers,
            start=start.strftime("%Y-%m-%d"),
            end=end.strftime("%Y-%m-%d"),
            auto_adjust=True,
            progress=False,
            group_by="column",
            threads=threads,
        )
    if isinstance(frame, pd.DataFrame) and log.by_ticker:
        frame.attrs[_LOGGED] = dict(log.by_ticker)
    return frame


def _download_with_retries(
    tickers: list[str],
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    retries: int,
    backoff: float,
    threads: bool | int,
    sleep: Callable[[float], None],
) -> tuple[dict[str, pd.DataFrame], dict[str, failures.Failure]]:
    """Download, retrying only the failed tickers; return (ok, failed -> why)."""
    ok: dict[str, pd.DataFrame] = {}
    pending = list(tickers)
    reasons: dict[str, failures.Failure] = {}
    for attempt in range(retries + 1):
        if attempt:
            delay = backoff * 2 ** (attempt - 1)
            logger.warning(
                "yfinance: %d ticker(s) failed (%s); retry %d/%d in %.1fs.",
                len(pending),
                "; ".join(f"{t}: {reasons[t]}" for t in pending),
                attempt,
                retries,
                delay,
            )
            sleep(delay)
        try:
            frame = _call_yfinance(pending, start, end, threads)
            got, failed = parse_download(frame, pending)
            logged = frame.attrs.get(_LOGGED, {})
            reasons = {t: failures.from_log(logged.get(t)) for t in failed}
        except MpoError:
            raise
        except Exception as exc:  # yfinance normally swallows errors; be safe if it does not
            got, failed = {}, list(pending)
            reasons = dict.fromkeys(failed, failures.from_exception(exc))
        ok.update(got)
        pending = failed
        if not pending:
            break
    return ok, reasons


# --------------------------------------------------------------------------- cache logic
def _plan(
    cached: CachedHistory | None,
    start: pd.Timestamp,
    end: pd.Timestamp,
    *,
    refresh: bool,
    revision_days: int,
) -> _Fetch | None:
    """What to download for one ticker, given its cache (None: nothing)."""
    if cached is None:
        return _Fetch(start, end, replace=True)
    need_head = start < cached.covered_start
    need_tail = end > cached.covered_end
    if not (need_head or need_tail):
        return None
    if not refresh:
        logger.info(
            "yfinance: refresh=False, using the cache alone although it covers only %s to %s.",
            cached.covered_start.date(),
            cached.covered_end.date(),
        )
        return None
    index = cached.frame.index
    # overlap with the cache so a revision (or a new adjustment basis) can be detected,
    # and so that the response is never legitimately empty
    fetch_start = start if need_head else index[-min(revision_days, len(index))]
    fetch_end = end if need_tail else index[0] + _ONE_DAY
    return _Fetch(fetch_start, max(fetch_end, fetch_start + _ONE_DAY), replace=False)


def _basis_changed(cached: pd.DataFrame, new: pd.DataFrame, rtol: float) -> bool:
    """True if the re-downloaded overlap days disagree with the cached closes."""
    common = cached.index.intersection(new.index)
    if common.empty:
        return False
    old = cached.loc[common, "Close"].to_numpy()
    fresh = new.loc[common, "Close"].to_numpy()
    return not np.allclose(old, fresh, rtol=rtol, atol=0.0)


def _merge(
    cached: CachedHistory | None,
    new: pd.DataFrame,
    fetch: _Fetch,
    request: tuple[pd.Timestamp, pd.Timestamp],
    today: pd.Timestamp,
) -> CachedHistory:
    """New cache content: the fresh rows override the cached ones on shared dates."""
    start = request[0] if cached is None else min(request[0], cached.covered_start)
    # today's bar may still be moving: never count it as covered
    end = min(max(request[1], fetch.end), today)
    if cached is not None and not fetch.replace:
        end = max(end, cached.covered_end)
        frame = pd.concat([cached.frame, new])
        frame = frame[~frame.index.duplicated(keep="last")].sort_index()
    else:
        frame = new
    return CachedHistory(frame=frame, covered_start=start, covered_end=max(end, start))


def _fetch_all(
    plans: dict[str, _Fetch],
    caches: dict[str, CachedHistory | None],
    store: PriceCache,
    request: tuple[pd.Timestamp, pd.Timestamp],
    today: pd.Timestamp,
    *,
    revision_rtol: float,
    **download_kwargs,
) -> tuple[dict[str, _Fetch], dict[str, failures.Failure]]:
    """Run the planned downloads, write successes to the cache.

    Returns the follow-up full downloads needed where the adjustment basis
    changed, and the failed tickers with a reason.
    """
    groups: dict[_Fetch, list[str]] = {}
    for ticker, fetch in plans.items():
        groups.setdefault(fetch, []).append(ticker)
    redo: dict[str, _Fetch] = {}
    failed: dict[str, failures.Failure] = {}
    for fetch, group in groups.items():
        logger.info(
            "yfinance: downloading %s from %s to %s (end exclusive).",
            ", ".join(group),
            fetch.start.date(),
            fetch.end.date(),
        )
        ok, bad = _download_with_retries(group, fetch.start, fetch.end, **download_kwargs)
        failed.update(bad)
        for ticker, frame in ok.items():
            cached = caches[ticker]
            if (
                cached is not None
                and not fetch.replace
                and _basis_changed(cached.frame, frame, revision_rtol)
            ):
                logger.info(
                    "yfinance: %s's adjusted history changed (dividend, split or revision); "
                    "downloading its whole cached range again.",
                    ticker,
                )
                first = min(request[0], cached.covered_start)
                redo[ticker] = _Fetch(first, max(request[1], cached.covered_end), replace=True)
                continue
            caches[ticker] = _merge(cached, frame, fetch, request, today)
            store.write(ticker, caches[ticker])
    return redo, failed


def _wide(caches: dict[str, CachedHistory | None], start, end, field: str) -> pd.DataFrame:
    columns = {}
    for ticker, cached in caches.items():
        frame = cached.frame if cached is not None else pd.DataFrame(columns=list(COLUMNS))
        rows = frame.loc[(frame.index >= start) & (frame.index < end)]
        columns[ticker] = rows["Close"] * rows["Volume"] if field == "dollar" else rows[field]
    wide = pd.DataFrame(columns).sort_index()
    wide.index = pd.DatetimeIndex(wide.index, name="Date")
    wide.columns.name = None
    return wide.astype(float)


def _covers(
    cached: CachedHistory | None, request: tuple[pd.Timestamp, pd.Timestamp], today: pd.Timestamp
) -> bool:
    """Whether the cache covers the request, today's (still moving, never cached) bar aside."""
    return (
        cached is not None
        and cached.covered_start <= request[0]
        and cached.covered_end >= min(request[1], today)
    )


def _serve_stale(
    ticker: str, why: failures.Failure, cached: CachedHistory, store: PriceCache
) -> None:
    last = cached.frame.index[-1].date() if len(cached.frame) else cached.covered_start.date()
    logger.warning(
        "yfinance: refreshing %s failed: %s; using its cached data up to %s (%s). Rerun when "
        "Yahoo is reachable to add newer dates.",
        ticker,
        why,
        last,
        store.path(ticker),
    )


def _cache_note(ticker: str, cached: CachedHistory | None) -> str:
    if cached is None or not len(cached.frame):
        return f"{ticker} has no cache"
    return (
        f"{ticker} is cached from {cached.covered_start.date()} to {cached.frame.index[-1].date()}"
    )


def _download_error(
    failed: dict[str, failures.Failure],
    caches: dict[str, CachedHistory | None],
    request: tuple[pd.Timestamp, pd.Timestamp],
    retries: int,
) -> DownloadError:
    """One message: which tickers failed, why (network, rate limit, no data), what to do."""
    names = sorted(failed)
    kinds = {failed[t].kind for t in names}
    details = "; ".join(f"{t}: {failed[t]}" for t in names)
    offline = ""
    if "network" in kinds:
        notes = ", ".join(_cache_note(t, caches[t]) for t in names if failed[t].kind == "network")
        offline = (
            f" To work offline, request only dates the cache covers ({notes}), or pass "
            "refresh=False to use the cache alone."
        )
    what = "the network is unreachable" if kinds == {"network"} else "download failed"
    return DownloadError(
        f"yfinance: {what} for {len(names)} ticker(s) {names} between {request[0].date()} and "
        f"{request[1].date()} after {retries + 1} attempt(s) ({details}). "
        f"{failures.hint(kinds)}; their cached data (if any) is unchanged.{offline}",
        tuple(names),
    )


# --------------------------------------------------------------------------- public
def download_prices(
    tickers: str | Iterable[str],
    start: str | pd.Timestamp,
    end: str | pd.Timestamp | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    retries: int = 3,
    backoff: float = 1.0,
    refresh: bool = True,
    threads: bool | int = True,
    revision_days: int = 1,
    revision_rtol: float = 1e-5,
    sleep: Callable[[float], None] | None = None,
    today: str | pd.Timestamp | None = None,
) -> PriceVolume:
    """Daily adjusted Close prices and dollar volumes from Yahoo Finance, through the cache.

    Parameters
    ----------
    tickers
        Yahoo symbols (a list, or one string of symbols separated by spaces or
        commas). Upper-cased and de-duplicated, as yfinance does.
    start, end
        Dates ``[start, end)``; ``end`` is exclusive like yfinance's, and
        ``None`` means up to and including today.
    cache_dir
        Cache directory (default ``data/cache/yfinance`` under the working directory).
    retries
        Extra attempts for the tickers that failed, after the first one.
    backoff
        Seconds before the first retry; doubled at each further retry.
    refresh
        When False a ticker that has a cache file is served from it alone, even
        if it does not cover ``[start, end)`` (offline, reproducible runs);
        tickers without a file are still downloaded.
    threads
        Passed to ``yfinance.download``.
    revision_days
        How many of the last cached days are downloaded again on an incremental
        refresh, to absorb revisions (at least 1).
    revision_rtol
        Relative tolerance on the re-downloaded closes; a larger change means
        the adjusted history was rebased and the whole range is downloaded again.
    sleep
        Called with the backoff delay in seconds (default ``time.sleep``; injectable for tests).
    today
        The current date (injectable for tests); today's bar is never counted as
        covered by the cache since it may still change.

    Returns
    -------
    PriceVolume
        ``prices`` (adjusted Close) and ``volumes`` (``Volume * Close``, dollars):
        the union of the tickers' dates; a day a ticker did not trade is NaN
        (fill with :func:`mpo.data.forward_fill_gaps`, as :func:`load_yfinance` does).

    Raises
    ------
    DownloadError
        If any ticker still fails after the retries (``failed_tickers`` names
        them), saying whether the network was unreachable or Yahoo returned no
        data. Tickers that succeeded are cached before it is raised; the failed
        ones keep their previous cache file untouched. A failed ticker whose
        cache covers ``[start, end)`` (today's bar aside) is served from the
        cache with a warning instead.
    DataError
        For malformed arguments.
    """
    if retries < 0 or backoff < 0 or revision_days < 1:
        raise DataError(
            f"need retries >= 0, backoff >= 0 and revision_days >= 1, got {retries=}, "
            f"{backoff=}, {revision_days=}."
        )
    symbols = _normalize_tickers(tickers)
    now = pd.Timestamp.today().normalize() if today is None else pd.Timestamp(today).normalize()
    request = _resolve_range(start, end, now)
    store = PriceCache(DEFAULT_CACHE_DIR if cache_dir is None else cache_dir)
    caches = {t: store.read(t) for t in symbols}
    plans = {}
    for ticker in symbols:
        fetch = _plan(caches[ticker], *request, refresh=refresh, revision_days=revision_days)
        if fetch is not None:
            plans[ticker] = fetch
    if not plans:
        logger.info(
            "yfinance: %s served from the cache in %s.", ", ".join(symbols), store.directory
        )
    kwargs = dict(retries=retries, backoff=backoff, threads=threads, sleep=sleep or time.sleep)
    failed: dict[str, failures.Failure] = {}
    while plans:
        plans, bad = _fetch_all(
            plans, caches, store, request, now, revision_rtol=revision_rtol, **kwargs
        )
        failed.update(bad)  # follow-up plans are full re-downloads: they cannot loop
    for ticker in [t for t in failed if _covers(caches[t], request, now)]:
        _serve_stale(ticker, failed.pop(ticker), caches[ticker], store)
    if failed:
        raise _download_error(failed, caches, request, retries)
    return PriceVolume(
        prices=_wide(caches, *request, field="Close"),
        volumes=_wide(caches, *request, field="dollar"),
    )


def load_yfinance(
    tickers: str | Iterable[str],
    start: str | pd.Timestamp,
    end: str | pd.Timestamp | None = None,
    *,
    cache_dir: str | os.PathLike[str] | None = None,
    max_ffill: int = DEFAULT_MAX_FFILL,
    cash_return: float = 0.0,
    **download_kwargs,
) -> MarketData:
    """Yahoo Finance daily data as a validated :class:`~mpo.data.MarketData`.

    Parameters
    ----------
    tickers, start, end, cache_dir
        As in :func:`download_prices` (``end`` exclusive).
    max_ffill
        Longest run of missing days filled by carrying the last price forward
        (zero return); a longer gap raises :class:`~mpo.errors.DataError`.
    cash_return
        Constant per-period return of the cash account.
    **download_kwargs
        Passed to :func:`download_prices` (``retries``, ``backoff``, ``refresh``...).

    Returns
    -------
    MarketData
        Forward returns of the adjusted closes, observed dollar volumes,
        ``name='yfinance'``. The last downloaded date is dropped (its forward
        return is not known yet).
    """
    data = download_prices(tickers, start, end, cache_dir=cache_dir, **download_kwargs)
    return MarketData.from_prices(
        data.prices,
        volumes=data.volumes,
        cash_return=cash_return,
        max_ffill=max_ffill,
        name="yfinance",
        notes=(
            "prices: Yahoo Finance daily closes adjusted for dividends and splits "
            "(yfinance, auto_adjust=True)",
            "volumes: Yahoo share volume x adjusted close (dollars)",
            f"cash: constant return {cash_return} per period",
        ),
    )
