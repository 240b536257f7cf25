"""The validated market-data bundle every other part of mpo consumes.

Conventions (those of cvxportfolio):

* ``returns.loc[t]`` is the *forward* return of each asset over the period
  that starts at ``t``: ``r_t = p_{t+1} / p_t - 1``. A decision made at ``t``
  may use ``returns`` strictly before ``t`` (cvxportfolio hands policies only
  ``past_returns``), never ``returns.loc[t]`` itself.
* ``prices.loc[t]`` is the price at which trades at ``t`` execute.
* ``volumes.loc[t]`` is the dollar volume traded during period ``t``.
* the cash account is a separate series and becomes the *last* column of the
  returns handed to cvxportfolio.

A :class:`MarketData` is rectangular: no missing value anywhere. Sources fill
gaps explicitly (see :func:`forward_fill_gaps`) before building one, so that a
silent NaN can never reach a backtest.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from mpo.errors import DataError

__all__ = ["MarketData", "forward_fill_gaps", "returns_from_prices"]

logger = logging.getLogger(__name__)

#: Default cap on consecutive missing prices that :func:`forward_fill_gaps` fills.
DEFAULT_MAX_FFILL = 5


def _first_bad(frame: pd.DataFrame, mask: np.ndarray) -> tuple[str, pd.Timestamp, int]:
    """Return (ticker, date, count) of the first True entry of ``mask``."""
    rows, cols = np.nonzero(mask)
    first = np.lexsort((cols, rows))[0]
    return str(frame.columns[cols[first]]), frame.index[rows[first]], int(mask.sum())


def _check_index(index: pd.Index, what: str) -> None:
    if not isinstance(index, pd.DatetimeIndex):
        raise DataError(
            f"{what} must have a DatetimeIndex of trading dates, got {type(index).__name__}. "
            "Parse the date column (e.g. pd.read_csv(..., index_col=0, parse_dates=True))."
        )
    if index.tz is not None:
        raise DataError(
            f"{what} has a timezone-aware index ({index.tz}); mpo uses tz-naive exchange-local "
            "dates: frame.index = frame.index.tz_localize(None).normalize()."
        )
    dup = index[index.duplicated()]
    if len(dup):
        raise DataError(
            f"{what} has {len(dup)} duplicate date(s), first {dup[0].date()}. "
            "Drop duplicates (frame[~frame.index.duplicated()]) before loading."
        )
    if not index.is_monotonic_increasing:
        pos = int(np.argmax(np.diff(index.asi8) < 0)) + 1
        raise DataError(
            f"{what} dates are not sorted: {index[pos].date()} comes after "
            f"{index[pos - 1].date()}. Sort with frame.sort_index()."
        )


def _numeric(frame: pd.DataFrame, what: str) -> pd.DataFrame:
    """``frame`` as float64; a non-numeric cell is a DataError naming ticker, date and value."""
    try:
        return frame.astype(float)
    except (TypeError, ValueError):
        pass
    num = frame.apply(pd.to_numeric, errors="coerce")
    bad = num.isna().to_numpy() & frame.notna().to_numpy()
    ticker, date, count = _first_bad(frame, bad)
    raise DataError(
        f"{what} has {count} non-numeric value(s); first: {frame.loc[date, ticker]!r} for ticker "
        f"{ticker!r} on {date.date()}. Clean the file (numbers only, empty for missing)."
    )


def _check_values(frame: pd.DataFrame, what: str, positive: bool = False) -> None:
    values = _numeric(frame, what).to_numpy()
    nonfinite = ~np.isfinite(values)
    if nonfinite.any():
        ticker, date, count = _first_bad(frame, nonfinite)
        kind = (
            "NaN"
            if np.isnan(values[frame.index.get_loc(date), frame.columns.get_loc(ticker)])
            else "inf"
        )
        raise DataError(
            f"{what} has {count} missing or infinite value(s); first: {kind} for ticker "
            f"{ticker!r} on {date.date()}. Fill gaps explicitly (mpo.data.forward_fill_gaps) "
            "or drop the ticker."
        )
    if positive:
        bad = values <= 0
        if bad.any():
            ticker, date, count = _first_bad(frame, bad)
            raise DataError(
                f"{what} has {count} non-positive value(s); first: {ticker!r} on {date.date()} "
                f"= {frame.loc[date, ticker]!r}. Prices and volumes must be > 0."
            )


def _check_columns(frame: pd.DataFrame, what: str) -> None:
    cols = frame.columns
    if cols.has_duplicates:
        raise DataError(
            f"{what} has duplicate ticker column(s): {sorted(set(cols[cols.duplicated()]))}."
        )
    if any(not isinstance(c, str) or not c for c in cols):
        raise DataError(f"{what} columns must be non-empty ticker strings, got {list(cols)[:5]}...")


def _run_lengths(mask: np.ndarray) -> np.ndarray:
    """Per column, the length so far of the current run of True values (0 where False)."""
    out = np.zeros(mask.shape, dtype=np.int64)
    run = np.zeros(mask.shape[1], dtype=np.int64)
    for i, row in enumerate(mask):
        run = np.where(row, run + 1, 0)
        out[i] = run
    return out


def forward_fill_gaps(
    frame: pd.DataFrame, max_gap: int = DEFAULT_MAX_FFILL, what: str = "prices"
) -> pd.DataFrame:
    """Fill interior gaps of at most ``max_gap`` consecutive periods by carrying forward.

    This is mpo's one gap policy, used by every source. A carried-forward price
    means a zero return over the gap and the move is booked on the first date
    with a real price again: no information from after the gap leaks into it.

    * Leading NaNs (a ticker not yet listed) are trimmed by dropping the first
      rows until every ticker has a value; the number of dropped rows is logged.
    * Trailing NaNs are filled like interior ones (carry the last price).
    * A gap longer than ``max_gap`` raises :class:`DataError` naming the ticker and
      the first missing date.
    """
    if max_gap < 0:
        raise ValueError(f"max_gap must be >= 0, got {max_gap=}.")
    if frame.empty:
        raise DataError(f"{what} is empty: no dates or no tickers.")
    first_valid = frame.apply(lambda col: col.first_valid_index())
    if first_valid.isna().any():
        empty = sorted(first_valid[first_valid.isna()].index)
        raise DataError(
            f"{what} has no data at all for ticker(s) {empty}. Check the symbols or drop them."
        )
    start = first_valid.max()
    if start != frame.index[0]:
        late = first_valid.idxmax()
        logger.info(
            "%s: dropped %d leading date(s) before %s so that every ticker has data (latest "
            "start: %s).",
            what,
            int((frame.index < start).sum()),
            start.date(),
            late,
        )
    trimmed = frame.loc[start:]
    missing = trimmed.isna()
    if missing.any().any():
        # length of each run of consecutive NaNs, per column
        too_long = _run_lengths(missing.to_numpy()) > max_gap
        if too_long.any():
            ticker, date, _ = _first_bad(trimmed, too_long)
            gap_start = trimmed.index[trimmed.index.get_loc(date) - max_gap]
            raise DataError(
                f"{what}: ticker {ticker!r} has more than {max_gap} consecutive missing periods "
                f"starting {gap_start.date()}. Drop the ticker, shorten the date range, or raise "
                "max_gap (the gap is filled with the last price, i.e. zero returns)."
            )
        logger.info(
            "%s: forward-filled %d isolated missing value(s).", what, int(missing.sum().sum())
        )
    return trimmed.ffill()


#: Periods of an unchanged price after which a column is reported as stale.
STALE_PERIODS = 20


def warn_stale_prices(prices: pd.DataFrame, name: str, periods: int = STALE_PERIODS) -> list[str]:
    """Warn (and return notes) for every ticker whose price stays unchanged ``periods`` or more.

    A constant price is a zero return: a stale or suspended quote that a policy
    would hold as if it were cash. Each note names the ticker and the dates.
    """
    notes = []
    values = prices.to_numpy(dtype=float)
    same = np.zeros_like(values, dtype=bool)
    same[1:] = values[1:] == values[:-1]
    for j, ticker in enumerate(prices.columns):
        run = best = end = 0
        for i, flag in enumerate(same[:, j]):
            run = run + 1 if flag else 0
            if run > best:
                best, end = run, i
        if best >= periods:
            first, last = prices.index[end - best], prices.index[end]
            note = (
                f"{name}: the price of {ticker!r} is unchanged for {best} periods, "
                f"{first.date()} to {last.date()} (stale or suspended quote: zero returns)."
            )
            logger.warning(note)
            notes.append(note)
    return notes


def check_price_spikes(market, factor: float = 5.0) -> None:
    """Refuse one-period price moves by more than ``factor`` that reverse the next period.

    A jump to ``factor`` times the price (or below ``1 / factor``) followed by a
    move back of at least half the jump (in log terms) is the signature of a bad
    tick (e.g. a 1000x spike), not of a market move; it would hand any policy
    holding the asset an absurd return. :class:`~mpo.errors.DataError` names the
    first ticker and date; pass ``max_jump = None`` (spec ``[data] max_jump``)
    to accept such data, or a larger factor.
    """
    if not (np.isfinite(factor) and factor > 1):
        raise DataError(f"max_jump must be a factor > 1, got {factor!r}.")
    r = market.returns.to_numpy(dtype=float)  # forward returns: row t is p[t+1] / p[t] - 1
    with np.errstate(divide="ignore", invalid="ignore"):
        lr = np.log1p(r)
    jump = np.abs(lr[:-1]) > np.log(factor)
    revert = (lr[1:] * lr[:-1] < 0) & (np.abs(lr[1:]) > 0.5 * np.abs(lr[:-1]))
    bad = jump & revert
    if not bad.any():
        return
    t, i = map(int, np.argwhere(bad)[0])
    cal = market.calendar
    ticker = market.tickers[i]
    raise DataError(
        f"price spike in {ticker!r}: the price moves x{np.exp(lr[t, i]):.3g} from {cal[t].date()} "
        f"to {cal[t + 1].date()} and x{np.exp(lr[t + 1, i]):.3g} back the next period "
        f"({int(bad.sum())} such spike(s) in the data). Fix the prices, or accept them with "
        "[data] max_jump = <a larger factor> (or max_jump = 0 to disable the check)."
    )


def returns_from_prices(prices: pd.DataFrame) -> pd.DataFrame:
    """Forward returns ``r_t = p_{t+1}/p_t - 1``; the last date (unknown return) is dropped."""
    return (prices.shift(-1) / prices - 1.0).iloc[:-1]


@dataclass(frozen=True, eq=False)
class MarketData:
    """Validated, rectangular market data.

    Parameters
    ----------
    returns
        Forward per-period returns, dates x tickers (no cash column).
    cash_return
        Per-period return of the cash account, indexed like ``returns``.
    prices
        Execution prices, same shape as ``returns``; optional.
    volumes
        Dollar volumes, same shape as ``returns``. When absent, ``adv`` must give
        an average daily dollar volume assumption for the market-impact term.
    adv
        Assumed average daily dollar volume per asset (used only when
        ``volumes`` is None). Never silently dropped: it is reported with results.
    name
        Short label of the source (``sp20``, ``yfinance``, ...).
    notes
        Free-text provenance notes shown with results.
    """

    returns: pd.DataFrame
    cash_return: pd.Series
    prices: pd.DataFrame | None = None
    volumes: pd.DataFrame | None = None
    adv: float | None = None
    name: str = "custom"
    notes: tuple[str, ...] = field(default_factory=tuple)
    cash_key: str = "cash"

    def __post_init__(self) -> None:
        self._validate()

    # ------------------------------------------------------------------ checks
    def _validate(self) -> None:
        r = self.returns
        if not isinstance(r, pd.DataFrame):
            raise DataError(f"returns must be a pandas DataFrame, got {type(r).__name__}.")
        if r.shape[0] < 2 or r.shape[1] < 1:
            raise DataError(
                f"returns must have at least 2 dates and 1 ticker, got shape {r.shape}."
            )
        _check_index(r.index, "returns")
        _check_columns(r, "returns")
        if self.cash_key in r.columns:
            raise DataError(
                f"returns has a column named {self.cash_key!r}, the cash account's name; pass cash "
                "returns via cash_return, not as a ticker."
            )
        _check_values(r, "returns")
        if (r.to_numpy() <= -1).any():
            ticker, date, _ = _first_bad(r, r.to_numpy() <= -1)
            raise DataError(
                f"returns: {ticker!r} on {date.date()} is <= -100% ({r.loc[date, ticker]:.4f}); "
                "returns must be simple per-period returns (p_next / p - 1), not prices or log-returns."
            )
        if not isinstance(self.cash_return, pd.Series) or not self.cash_return.index.equals(
            r.index
        ):
            raise DataError("cash_return must be a Series with exactly the returns' dates.")
        if not np.isfinite(self.cash_return.to_numpy(dtype=float)).all():
            bad = self.cash_return.index[~np.isfinite(self.cash_return.to_numpy(dtype=float))][0]
            raise DataError(f"cash_return is missing or infinite on {bad.date()}.")
        for what, frame, positive in (
            ("prices", self.prices, True),
            ("volumes", self.volumes, True),
        ):
            if frame is None:
                continue
            if not frame.index.equals(r.index):
                extra = frame.index.symmetric_difference(r.index)
                raise DataError(
                    f"{what} dates do not match returns' dates ({len(extra)} differ, first "
                    f"{extra[0].date() if len(extra) else '?'}). Align them with .reindex(returns.index)."
                )
            if list(frame.columns) != list(r.columns):
                only_f = sorted(set(frame.columns) - set(r.columns))
                only_r = sorted(set(r.columns) - set(frame.columns))
                raise DataError(
                    f"{what} columns do not match returns' tickers: only in {what}: {only_f}, only "
                    f"in returns: {only_r}"
                    + ("" if only_f or only_r else " (same tickers, different order)")
                    + ". Select and order them like returns.columns."
                )
            _check_values(frame, what, positive=positive)
        if self.volumes is None:
            if self.adv is None:
                raise DataError(
                    f"data {self.name!r} has no volumes: give an average-daily-volume assumption "
                    "(adv, in dollars) so the market-impact cost term can be charged."
                )
            if not (np.isfinite(self.adv) and self.adv > 0):
                raise DataError(f"adv must be a positive dollar volume, got {self.adv=}.")

    # -------------------------------------------------------------- accessors
    @property
    def tickers(self) -> list[str]:
        """Asset names, in column order."""
        return list(self.returns.columns)

    @property
    def calendar(self) -> pd.DatetimeIndex:
        """Trading dates (the index of ``returns``)."""
        return self.returns.index  # type: ignore[return-value]

    @property
    def n_assets(self) -> int:
        return self.returns.shape[1]

    @property
    def dollar_volumes(self) -> pd.DataFrame:
        """Dollar volumes, or the constant ``adv`` assumption broadcast to a frame."""
        if self.volumes is not None:
            return self.volumes
        return pd.DataFrame(float(self.adv), index=self.returns.index, columns=self.returns.columns)

    @property
    def volume_note(self) -> str:
        """Human-readable statement of where the impact term's volumes come from."""
        if self.volumes is not None:
            return "volumes: observed dollar volumes"
        return f"volumes: ASSUMED constant average daily volume of ${self.adv:,.0f} per asset"

    def require_history(self, periods: int, what: str = "the requested windows") -> None:
        """Raise :class:`DataError` unless there are at least ``periods`` dates."""
        if len(self.calendar) < periods:
            raise DataError(
                f"data {self.name!r} has {len(self.calendar)} periods "
                f"({self.calendar[0].date()} to {self.calendar[-1].date()}), but {what} need "
                f"{periods}. Use a longer date range or shorter lookbacks."
            )

    def select(self, tickers: list[str]) -> MarketData:
        """Sub-universe, in the given order; unknown tickers raise :class:`DataError`."""
        unknown = [t for t in tickers if t not in self.returns.columns]
        if unknown:
            raise DataError(
                f"unknown ticker(s) {unknown} for data {self.name!r}; available: {self.tickers}."
            )
        cols = list(tickers)
        return replace(
            self,
            returns=self.returns[cols],
            prices=None if self.prices is None else self.prices[cols],
            volumes=None if self.volumes is None else self.volumes[cols],
        )

    def slice(
        self, start: str | pd.Timestamp | None = None, end: str | pd.Timestamp | None = None
    ) -> MarketData:
        """Dates in ``[start, end]`` (inclusive)."""
        idx = self.calendar
        mask = np.ones(len(idx), dtype=bool)
        if start is not None:
            mask &= idx >= pd.Timestamp(start)
        if end is not None:
            mask &= idx <= pd.Timestamp(end)
        if mask.sum() < 2:
            raise DataError(
                f"the window {start} to {end} leaves {int(mask.sum())} period(s) of data "
                f"{self.name!r} (available {idx[0].date()} to {idx[-1].date()})."
            )
        return replace(
            self,
            returns=self.returns.loc[mask],
            cash_return=self.cash_return.loc[mask],
            prices=None if self.prices is None else self.prices.loc[mask],
            volumes=None if self.volumes is None else self.volumes.loc[mask],
        )

    # ------------------------------------------------------------ fingerprint
    def fingerprint(self) -> str:
        """SHA-256 of every frame's values, index and columns (short hex)."""
        h = hashlib.sha256()
        for frame in (self.returns, self.cash_return.to_frame(), self.prices, self.volumes):
            if frame is None:
                h.update(b"none")
                continue
            h.update(np.ascontiguousarray(frame.to_numpy(dtype=np.float64)).tobytes())
            h.update(np.ascontiguousarray(frame.index.as_unit("ns").asi8).tobytes())
            h.update("|".join(map(str, frame.columns)).encode())
        h.update(repr(self.adv).encode())
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        """Small JSON-able summary recorded with every run."""
        return {
            "name": self.name,
            "tickers": self.tickers,
            "start": str(self.calendar[0].date()),
            "end": str(self.calendar[-1].date()),
            "periods": len(self.calendar),
            "volumes": self.volume_note,
            "fingerprint": self.fingerprint(),
            "notes": list(self.notes),
        }

    # ---------------------------------------------------------- cvxportfolio
    def returns_with_cash(self) -> pd.DataFrame:
        """Returns with the cash account appended as the last column (cvxportfolio layout)."""
        out = self.returns.copy()
        out[self.cash_key] = self.cash_return.to_numpy()
        return out

    def to_cvxportfolio(self, min_history_periods: int = 0):
        """Build ``cvxportfolio.UserProvidedMarketData`` with the cash column last.

        ``min_history_periods`` is converted to a calendar ``min_history`` so an
        asset enters the backtest only once that much history exists.
        """
        import cvxportfolio as cvx

        if min_history_periods > 0:
            self.require_history(min_history_periods + 1, "min_history")
            min_history = self.calendar[min_history_periods] - self.calendar[0]
        else:
            min_history = pd.Timedelta(0)
        return cvx.UserProvidedMarketData(
            returns=self.returns_with_cash(),
            volumes=self.dollar_volumes,
            prices=self.prices,
            cash_key=self.cash_key,
            min_history=min_history,
        )

    # -------------------------------------------------------------- builders
    @classmethod
    def from_prices(
        cls,
        prices: pd.DataFrame,
        volumes: pd.DataFrame | None = None,
        *,
        cash_return: float | pd.Series = 0.0,
        adv: float | None = None,
        max_ffill: int = DEFAULT_MAX_FFILL,
        volumes_in_shares: bool = False,
        name: str = "custom",
        notes: tuple[str, ...] = (),
    ) -> MarketData:
        """Build from a wide price panel (and optional volumes) with the explicit gap policy.

        Prices are validated, gaps of at most ``max_ffill`` periods forward-filled,
        forward returns computed, and the last date (whose return is unknown)
        dropped. ``volumes_in_shares=True`` converts share volumes to dollars with
        the same-date price. Missing or zero volumes are replaced by the previous
        period's volume for at most ``max_ffill`` consecutive periods (the same
        gap policy as prices); longer runs and negative volumes are errors.
        """
        _check_index(prices.index, "prices")
        _check_columns(prices, "prices")
        prices = _numeric(prices, "prices")
        inf = np.isinf(prices.to_numpy())
        if inf.any():
            ticker, date, count = _first_bad(prices, inf)
            raise DataError(
                f"prices has {count} infinite value(s); first {ticker!r} on {date.date()}."
            )
        finite = prices.to_numpy()
        nonpos = np.nan_to_num(finite, nan=1.0) <= 0
        if nonpos.any():
            ticker, date, count = _first_bad(prices, nonpos)
            raise DataError(
                f"prices has {count} non-positive value(s); first {ticker!r} on {date.date()} = "
                f"{prices.loc[date, ticker]!r}. Prices must be > 0."
            )
        filled = forward_fill_gaps(prices, max_gap=max_ffill, what="prices")
        rets = returns_from_prices(filled)
        vols = None
        if volumes is not None:
            _check_index(volumes.index, "volumes")
            missing_t = sorted(set(prices.columns) - set(volumes.columns))
            if missing_t:
                raise DataError(f"volumes lack ticker(s) {missing_t} that prices have.")
            vols = _numeric(volumes[list(prices.columns)], "volumes").reindex(rets.index)
            negative = (vols < 0).to_numpy()
            if negative.any():
                ticker, date, count = _first_bad(vols, negative)
                raise DataError(
                    f"volumes has {count} negative value(s); first {ticker!r} on {date.date()} = "
                    f"{vols.loc[date, ticker]!r}. Volumes must be >= 0."
                )
            if volumes_in_shares:
                vols = vols * filled.loc[rets.index]
            vols = vols.fillna(0.0)
            vols = vols.where(vols > 0)
            # zero / missing volume on a day: use the previous day's (documented gap policy)
            vols = forward_fill_gaps(vols, max_gap=max_ffill, what="volumes").reindex(rets.index)
            if vols.isna().any().any():
                ticker, date, _ = _first_bad(vols, vols.isna().to_numpy())
                raise DataError(
                    f"volumes: no positive volume for {ticker!r} at the start ({date.date()}); "
                    "shorten the date range."
                )
        if isinstance(cash_return, pd.Series):
            cash = cash_return.reindex(rets.index)
        else:
            cash = pd.Series(float(cash_return), index=rets.index)
        cash.name = "cash"
        return cls(
            returns=rets,
            cash_return=cash,
            prices=filled.loc[rets.index],
            volumes=vols,
            adv=adv,
            name=name,
            notes=tuple(notes),
        )
