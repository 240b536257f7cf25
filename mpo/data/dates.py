"""Dates of market data: exchange-local calendar days, the data's frequency, gaps between dates.

* :func:`local_dates` turns timestamps as files and yfinance write them
  (tz-aware, possibly with a different UTC offset on each side of a DST change,
  e.g. ``2020-03-06 00:00:00-05:00`` and ``2020-03-09 00:00:00-04:00``) into the
  tz-naive calendar dates of the exchange that printed them.
* :func:`frequency` says whether dates are daily, weekly, monthly... and how
  many periods a year they hold: every lookback of a spec counts periods.
* :func:`check_date_gaps` refuses a step between consecutive dates far longer
  than the data's typical spacing (a multi-week hole in a daily series would
  otherwise be booked as one period).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import NamedTuple

import numpy as np
import pandas as pd

from mpo.errors import DataError
from mpo.metrics import periods_per_year

__all__ = ["Frequency", "check_date_gaps", "frequency", "local_dates", "median_spacing"]

logger = logging.getLogger(__name__)

#: Default of ``[data] max_date_gap``: a step of more than this many median spacings is an error.
DEFAULT_MAX_DATE_GAP = 10.0

#: Gaps named in the error message (the count says how many there are).
_SHOWN_GAPS = 3


# --------------------------------------------------------------------------- local dates
def _wall_clock(value) -> tuple[pd.Timestamp, bool]:
    """``value`` on its own wall clock, tz-naive, and whether it was tz-aware (NaT: no date)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return pd.NaT, False
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT, False
    if stamp is pd.NaT:
        return pd.NaT, False
    if stamp.tzinfo is None:
        return stamp, False
    return stamp.tz_localize(None), True


def _refuse_duplicates(dates: pd.DatetimeIndex, raw: list, what: str) -> None:
    dup = dates.duplicated(keep=False)
    if not dup.any():
        return
    first = dates[dup][0]
    stamps = [str(r) for r, d in zip(raw, dates, strict=True) if d == first][:3]
    raise DataError(
        f"{what}: {int(dates.duplicated().sum())} date(s) repeat once timestamps are read as "
        f"exchange-local calendar days; first {first.date()} from {', '.join(stamps)}. Keep "
        "one row per trading day (e.g. drop the extra rows of a second download)."
    )


def local_dates(values: pd.Index | Iterable, what: str) -> pd.DatetimeIndex:
    """Exchange-local, tz-naive dates of ``values`` (tz-aware ones normalised to their day).

    Parameters
    ----------
    values
        Dates: a ``DatetimeIndex`` (tz-aware or not), or timestamps or strings,
        possibly with different UTC offsets (``-05:00`` before a DST change,
        ``-04:00`` after) or mixing naive and tz-aware ones.
    what
        Named in messages (a file name, ``"yfinance AAPL"``).

    Returns
    -------
    pd.DatetimeIndex
        Tz-naive, named ``Date``. A tz-aware timestamp becomes the calendar day
        of its own wall clock (``2020-03-09 00:00:00-04:00`` -> 2020-03-09, never
        the UTC day); naive values are kept as they are.

    Raises
    ------
    DataError
        A value that does not parse (named with its row), or two values that
        fall on the same local day (named with the day and the timestamps).
    """
    if isinstance(values, pd.DatetimeIndex):
        if values.tz is None:
            return values.rename("Date")
        dates = values.tz_localize(None).normalize()
        _refuse_duplicates(dates, list(values), what)
        _note_times_of_day(values.tz_localize(None), what)
        return dates.rename("Date")
    raw = list(values)
    parsed = [_wall_clock(v) for v in raw]
    bad = [i for i, (stamp, _) in enumerate(parsed) if stamp is pd.NaT]
    if bad:
        raise DataError(
            f"{what}: cannot parse the date {raw[bad[0]]!r} on data row {bad[0] + 1}. The "
            "first column must hold one date per row, e.g. 2020-01-31 (or 2020-01-31 "
            "00:00:00-05:00 with a UTC offset)."
        )
    wall = pd.DatetimeIndex([stamp for stamp, _ in parsed])
    aware = np.array([flag for _, flag in parsed])
    if aware.any():
        _note_times_of_day(wall[aware], what)
        wall = pd.DatetimeIndex(np.where(aware, wall.normalize(), wall))
    _refuse_duplicates(wall, raw, what)
    return wall.rename("Date")


def _note_times_of_day(wall: pd.DatetimeIndex, what: str) -> None:
    """Warn when tz-aware timestamps are not at midnight: their day is the local wall-clock day."""
    if not len(wall):
        return
    times = wall[wall != wall.normalize()]
    if len(times):
        logger.warning(
            "%s: %d tz-aware timestamp(s) are not at midnight (first %s); each is read as the "
            "calendar day of its own clock. If they are UTC instants of another exchange's "
            "close, convert them to the exchange's timezone first (e.g. "
            "index.tz_convert('Asia/Tokyo')).",
            what,
            len(times),
            times[0],
        )


# --------------------------------------------------------------------------- frequency
class Frequency(NamedTuple):
    """How often dates come: ``label`` (daily, weekly...), periods a year, median spacing."""

    label: str
    periods_per_year: float
    spacing: pd.Timedelta

    @property
    def is_daily(self) -> bool:
        return self.label == "daily"


#: (largest median spacing in days, label), in increasing order.
_LABELS = ((0.99, "intraday"), (1.5, "daily"), (10.0, "weekly"), (45.0, "monthly"))
_LABELS += ((120.0, "quarterly"), (400.0, "yearly"))


def median_spacing(index: pd.DatetimeIndex) -> pd.Timedelta:
    """Median step between consecutive dates (one day if there are fewer than 2)."""
    if len(index) < 2:
        return pd.Timedelta(days=1)
    steps = np.diff(index.as_unit("ns").asi8)
    return pd.Timedelta(int(np.median(steps)), unit="ns")


def frequency(index: pd.DatetimeIndex) -> Frequency:
    """The :class:`Frequency` of ``index``, from its median spacing (weekends make no difference)."""
    spacing = median_spacing(index)
    days = spacing / pd.Timedelta(days=1)
    label = next((name for limit, name in _LABELS if days <= limit), f"every {days:.0f} days")
    return Frequency(label, periods_per_year(index), spacing)


# --------------------------------------------------------------------------- gaps
def check_date_gaps(
    index: pd.DatetimeIndex, factor: float = DEFAULT_MAX_DATE_GAP, name: str = "data"
) -> None:
    """Refuse steps between consecutive dates of more than ``factor`` median spacings.

    The threshold is ``factor * max(median spacing, 1 day)`` calendar days: 10
    days for daily data with the default (so market closures such as the four
    days after 9/11, a 7-day step, pass), 70 days for weekly data. Such a gap is
    one period in every return, lookback and annualisation, and its whole move
    one return: :class:`~mpo.errors.DataError` names the first gaps, their
    lengths in calendar days and the override (``[data] max_date_gap``; ``0``
    disables the check).
    """
    if not (np.isfinite(factor) and factor > 1):
        raise DataError(
            f"max_date_gap must be a factor > 1 of the data's median spacing (or 0 to disable "
            f"the check), got {factor!r}."
        )
    if len(index) < 3:
        return
    spacing = max(median_spacing(index), pd.Timedelta(days=1))
    limit = factor * spacing
    steps = index[1:] - index[:-1]
    where = np.flatnonzero(steps > limit)
    if not len(where):
        return
    shown = ", ".join(
        f"{index[i].date()} to {index[i + 1].date()} ({steps[i].days} days)"
        for i in where[:_SHOWN_GAPS]
    )
    more = f" and {len(where) - _SHOWN_GAPS} more" if len(where) > _SHOWN_GAPS else ""
    raise DataError(
        f"data {name!r} has {len(where)} gap(s) between consecutive dates longer than "
        f"{factor:g} times their median spacing of {_days(spacing)} ({_days(limit)}): "
        f"{shown}{more}. Each gap would be booked as one period (its whole move in one "
        "return). Fill in the missing dates, load a date range without the gap, or accept "
        f"it with [data] max_date_gap = <a larger factor> (or max_date_gap = 0 to disable "
        "the check)."
    )


def _days(delta: pd.Timedelta) -> str:
    days = delta / pd.Timedelta(days=1)
    return f"{days:g} calendar day" + ("" if days == 1 else "s")
