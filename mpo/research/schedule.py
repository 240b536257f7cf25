"""The walk-forward fold schedule: training windows, purge gaps and test windows that tile.

Fold ``k``'s test window starts at ``start + train + k * test`` (calendar
arithmetic, snapped to the next trading date) and ends the day before fold
``k + 1``'s; the last one ends at ``end``. The test windows therefore tile
``[first test start, end]`` with no gap and no overlap. Fold ``k``'s training
window ends ``purge`` periods before its test start and starts ``train``
before the test start (rolling) or at ``start`` (anchored, an expanding
window). Data before a training window is history for the estimators only.

The purge (:func:`resolve_purge`):

- ``auto`` (default): the longest forward horizon a training label or a
  tuning objective reads past its decision date, plus an embargo of
  :data:`EMBARGO` periods. A learned spec's labels are the next ``H``
  returns (its QP horizon); a tuning objective scores each decision by the
  next period's return; a spec fitted on nothing needs none. Estimators that
  read the history *before* a test decision are not leakage; labels that
  reach into the test window are.
- ``lookback``: the policies' longest lookback (the conservative rule of
  ``mpo tune``): no test decision's estimator window overlaps the training
  window.
- an integer number of periods.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pandas as pd

from mpo.errors import ResearchError

__all__ = [
    "EMBARGO",
    "Fold",
    "fold_frame",
    "make_folds",
    "parse_duration",
    "resolve_purge",
]

#: Periods added to the label horizon by ``--purge auto``.
EMBARGO = 5

_UNITS = {"y": "years", "m": "months", "w": "weeks", "d": "periods"}


@dataclass(frozen=True)
class Duration:
    """A window length: calendar years/months/weeks, or a number of periods (``d``)."""

    n: int
    unit: str  # years | months | weeks | periods
    text: str

    def after(self, cal: pd.DatetimeIndex, pos: int, times: int = 1) -> int:
        """Calendar position ``times`` lengths after position ``pos`` (may be ``len(cal)``).

        Calendar lengths are added to the date of ``pos`` before snapping to
        the next trading date, so repeated steps do not drift.
        """
        if self.unit == "periods":
            return pos + self.n * times
        return int(cal.searchsorted(cal[pos] + pd.DateOffset(**{self.unit: self.n * times})))

    def before(self, cal: pd.DatetimeIndex, pos: int) -> int:
        """Calendar position ``self`` before position ``pos`` (may be negative)."""
        if self.unit == "periods":
            return pos - self.n
        target = cal[pos] - pd.DateOffset(**{self.unit: self.n})
        return int(cal.searchsorted(target)) if target >= cal[0] else -1


def parse_duration(value: str, what: str) -> Duration:
    """Read ``4y``, ``18m``, ``26w`` or ``252d`` (periods, i.e. trading days).

    Raises
    ------
    ResearchError
        An unreadable or non-positive length, naming ``what`` (``--train``).
    """
    m = re.fullmatch(r"\s*(\d+)\s*([ymwd])\s*", str(value).lower())
    if not m:
        raise ResearchError(
            f"cannot read {what} {value!r}: give a length such as 4y (years), 18m (months), "
            "26w (weeks) or 252d (periods, i.e. trading days)."
        )
    n = int(m.group(1))
    if n < 1:
        raise ResearchError(f"{what} {value!r} is empty: give a length of at least one period.")
    return Duration(n, _UNITS[m.group(2)], str(value).strip())


@dataclass(frozen=True)
class Fold:
    """One fold: inclusive training and test windows on the data's calendar."""

    index: int
    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    purge: int
    train_periods: int
    test_periods: int

    def describe(self) -> dict:
        """JSON-ready (dates as ``YYYY-MM-DD``)."""
        day = lambda t: str(t.date())  # noqa: E731
        return {
            "fold": self.index,
            "train_start": day(self.train_start),
            "train_end": day(self.train_end),
            "purge": self.purge,
            "test_start": day(self.test_start),
            "test_end": day(self.test_end),
            "train_periods": self.train_periods,
            "test_periods": self.test_periods,
        }


def fold_frame(folds: list[Fold]) -> pd.DataFrame:
    """The schedule as a table, one row per fold."""
    return pd.DataFrame([f.describe() for f in folds]).set_index("fold")


def resolve_purge(value: str | int | None, horizons: dict[str, int], lookbacks: dict[str, int]):
    """``(periods, rule)`` of ``--purge auto|lookback|N`` (see the module docstring).

    ``horizons`` are each spec's label horizon in periods, ``lookbacks`` each
    spec's longest estimator lookback.
    """
    text = "auto" if value is None else str(value).strip().lower()
    if text == "auto":
        who = max(horizons, key=horizons.get) if horizons else None
        h = horizons[who] if who else 0
        rule = f"auto: label horizon {h} period(s)" + (f" ({who})" if h else "")
        return h + EMBARGO, rule + f" + embargo {EMBARGO}"
    if text == "lookback":
        who = max(lookbacks, key=lookbacks.get)
        return lookbacks[who], f"lookback: longest estimator lookback ({who})"
    m = re.fullmatch(r"(\d+)d?", text)
    if not m:
        raise ResearchError(
            f"cannot read --purge {value!r}: give auto, lookback or a number of periods (e.g. 10)."
        )
    return int(m.group(1)), "given"


def _pos(cal: pd.DatetimeIndex, date, what: str, side: str = "left") -> int:
    try:
        ts = pd.Timestamp(date)
    except (TypeError, ValueError):
        raise ResearchError(f"cannot read {what} {date!r}; use YYYY-MM-DD.") from None
    if ts.tz is not None:
        ts = ts.tz_localize(None)
    return int(cal.searchsorted(ts, side=side))


def make_folds(
    calendar: pd.DatetimeIndex,
    *,
    train: str,
    test: str,
    start=None,
    end=None,
    anchored: bool = False,
    purge: int = 0,
    history: int = 0,
    data_name: str = "data",
) -> list[Fold]:
    """The fold schedule on ``calendar`` (see the module docstring).

    Parameters
    ----------
    calendar
        The data's dates; the last one is never a decision date (its forward
        return is unknown).
    train, test
        Window lengths (:func:`parse_duration`).
    start, end
        First training date (default: the first date with ``history``
        periods before it) and last test date (default: the last tradable one).
    anchored
        Expanding training windows from ``start``.
    purge
        Periods between a training window's end and its test start.
    history
        Periods of history the policies need before the first training date.

    Raises
    ------
    ResearchError
        Windows that do not fit the data (naming the dates that would), a test
        window shorter than a period, too little history.
    """
    cal = pd.DatetimeIndex(calendar)
    span = f"{data_name} covers {cal[0].date()} to {cal[-1].date()}"
    tr, te = parse_duration(train, "--train"), parse_duration(test, "--test")
    last = len(cal) - 2  # the last decision date with a known forward return
    s = history if start is None else _pos(cal, start, "--start")
    e = last if end is None else min(_pos(cal, end, "--end", side="right") - 1, last)
    if start is not None and pd.Timestamp(start) < cal[0]:
        raise ResearchError(f"--start {start} is before the data begin: {span}.")
    if s > last:
        raise ResearchError(f"--start {start} is after the last tradable date: {span}.")
    if s < history:
        raise ResearchError(
            f"the first training window starts {cal[s].date()} with {s} periods of history, but "
            f"the policies need {history}; the earliest --start on this data is "
            f"{cal[min(history, last)].date()} ({span})."
        )
    ts0 = tr.after(cal, s)
    if ts0 + purge >= len(cal) or ts0 > e:
        first = cal[min(ts0, len(cal) - 1)].date() if ts0 < len(cal) else "after the data end"
        raise ResearchError(
            f"--train {tr.text} from {cal[s].date()} puts the first test window at {first}, after "
            f"the last test date {cal[e].date()} ({span}); use an earlier --start, a later --end "
            "or a shorter --train."
        )
    starts = [ts0]
    while True:
        nxt = te.after(cal, ts0, len(starts))
        if nxt <= starts[-1]:
            raise ResearchError(
                f"--test {te.text} is shorter than one period of {data_name} (dates "
                f"{cal[starts[-1]].date()} and {cal[min(starts[-1] + 1, last)].date()}); give a "
                "longer test window."
            )
        if nxt > e:
            break
        starts.append(nxt)
    folds = []
    for k, ts in enumerate(starts):
        tend = starts[k + 1] - 1 if k + 1 < len(starts) else e
        tre = ts - purge - 1
        trs = s if anchored or k == 0 else max(tr.before(cal, ts), s)
        if tre - trs + 1 < 2:
            raise ResearchError(
                f"fold {k}: the training window {cal[trs].date()} to {cal[max(tre, 0)].date()} "
                f"holds {max(tre - trs + 1, 0)} periods after a purge of {purge}; use a longer "
                "--train or a shorter --purge."
            )
        folds.append(
            Fold(k, cal[trs], cal[tre], cal[ts], cal[tend], purge, tre - trs + 1, tend - ts + 1)
        )
    return folds
