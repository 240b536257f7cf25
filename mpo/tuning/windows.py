"""Training and test windows of a tuning study, separated by a purge gap.

The purge is at least as long as the policy's longest lookback (forecaster,
covariance, cost estimators), so no test-window decision is based on data the
selection saw.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mpo.config import PolicySpec
from mpo.data.market import MarketData
from mpo.errors import TuningError
from mpo.policies import required_history

__all__ = ["MIN_TRAIN_PERIODS", "Windows", "lookback", "parse_purge", "resolve_windows"]

#: Shortest training window, in periods.
MIN_TRAIN_PERIODS = 20


@dataclass(frozen=True)
class Windows:
    """Resolved training and test windows (inclusive), on the data's calendar.

    Attributes
    ----------
    train_start, train_end, test_start, test_end
        First and last dates of each window.
    purge
        Required gap between the windows, in periods.
    gap
        Actual gap between the windows, in periods (``>= purge``).
    lookback
        The policy's longest lookback over the tuned range, in periods.
    """

    train_start: pd.Timestamp
    train_end: pd.Timestamp
    test_start: pd.Timestamp
    test_end: pd.Timestamp
    purge: int
    gap: int
    lookback: int

    def describe(self) -> dict:
        """JSON-ready description (dates as ``YYYY-MM-DD``)."""
        return {
            "train": [str(self.train_start.date()), str(self.train_end.date())],
            "test": [str(self.test_start.date()), str(self.test_end.date())],
            "purge_periods": self.purge,
            "gap_periods": self.gap,
            "lookback_periods": self.lookback,
        }


def parse_purge(value: int | str | None) -> int | None:
    """Read a purge given in periods (trading days).

    Parameters
    ----------
    value
        ``600``, ``"600"`` or ``"600d"``; ``None`` means "use the lookback".

    Returns
    -------
    int or None
        The number of periods (``600``), or ``None``.
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise TuningError(
            f"purge must be a number of periods such as 600 or '600d', got {value!r}."
        )
    if isinstance(value, int | np.integer):
        if value < 0:
            raise TuningError(f"purge must be >= 0 periods, got {value}.")
        return int(value)
    m = re.fullmatch(r"\s*(\d+)\s*d?\s*", str(value))
    if not m:
        raise TuningError(
            f"cannot read purge {value!r}: give a number of periods (trading days), e.g. 600 or "
            "'600d'."
        )
    return int(m.group(1))


def lookback(spec: PolicySpec) -> int:
    """Longest lookback of ``spec`` over the tuned range (the horizon may be tuned)."""
    need = required_history(spec)
    p = spec.tuning.params.get("planning_horizon")
    if p is not None:
        need = max(
            need, required_history(spec.with_updates(objective={"planning_horizon": int(p.high)}))
        )
    return need


def _date(value, what: str) -> pd.Timestamp:
    try:
        return pd.Timestamp(value)
    except (ValueError, TypeError):
        raise TuningError(f"cannot read {what} date {value!r}; use YYYY-MM-DD.") from None


def resolve_windows(
    spec: PolicySpec,
    market: MarketData,
    *,
    train: tuple[str | None, str | None] | None = None,
    test: tuple[str | None, str | None] | None = None,
    purge: int | str | None = None,
) -> Windows:
    """Resolve and check the training and test windows on ``market``'s calendar.

    Precedence: arguments, then the spec's ``[tuning]``, then (test window
    only) the spec's ``[backtest]`` window. A missing training end is placed
    ``purge`` periods before the test start, a missing training start at the
    first date with enough history.

    Raises
    ------
    TuningError
        When a window is empty, the windows overlap or are in the wrong order,
        the gap between them is shorter than the purge, or the purge is
        shorter than the policy's longest lookback.
    """
    t = spec.tuning
    cal = market.calendar
    need = lookback(spec)
    purge_n = parse_purge(purge if purge is not None else t.purge)
    if purge_n is None:
        purge_n = need
    if purge_n < need:
        raise TuningError(
            f"purge of {purge_n} periods is shorter than the longest lookback of policy "
            f"{spec.name!r} ({need} periods: forecaster, covariance and cost estimators); "
            f"test-window decisions would use data the tuning saw. Use --purge {need} or more."
        )
    train = train or (None, None)
    test = test or (None, None)
    te_s = test[0] or t.test_start or spec.backtest.start
    te_e = test[1] or t.test_end or (spec.backtest.end if not test[0] else None)
    if te_s is None:
        raise TuningError(
            f"no test window for policy {spec.name!r}: give --test START END, or test_start in "
            "[tuning], or start in [backtest]."
        )
    span = f"data {market.name!r} covers {cal[0].date()} to {cal[-1].date()}"
    ts = int(cal.searchsorted(_date(te_s, "test start")))
    te = (
        int(cal.searchsorted(_date(te_e, "test end"), side="right")) - 1
        if te_e is not None
        else len(cal) - 1
    )
    if ts >= len(cal) or te - ts < 2:
        raise TuningError(
            f"the test window {te_s} to {te_e or 'the end of the data'} holds fewer than 3 "
            f"periods; {span}."
        )
    tr_s = train[0] or t.train_start
    tr_e = train[1] or t.train_end
    if tr_e is not None:
        tre = int(cal.searchsorted(_date(tr_e, "train end"), side="right")) - 1
    else:
        tre = ts - purge_n - 1
    trs = int(cal.searchsorted(_date(tr_s, "train start"))) if tr_s is not None else need
    if trs > te:
        raise TuningError(
            f"the training window ({tr_s}) starts after the test window ends ({cal[te].date()}): "
            "the training window must come first."
        )
    if tre >= ts:
        raise TuningError(
            f"the training window (ending {cal[max(tre, 0)].date()}) overlaps the test window "
            f"(starting {cal[ts].date()}); they must be disjoint and separated by a purge of at "
            f"least {purge_n} periods."
        )
    if tre - trs + 1 < MIN_TRAIN_PERIODS:
        where = f"{cal[trs].date()}" if trs < len(cal) else str(tr_s)
        raise TuningError(
            f"the training window from {where} to {cal[max(tre, 0)].date()} holds "
            f"{max(tre - trs + 1, 0)} periods; at least {MIN_TRAIN_PERIODS} are needed (policy "
            f"{spec.name!r} needs {need} periods of history before it, a purge of {purge_n} "
            f"periods must separate it from the test start {cal[ts].date()}; {span})."
        )
    if trs < need:
        raise TuningError(
            f"the training window starts at {cal[trs].date()} with {trs} periods of history, but "
            f"policy {spec.name!r} needs {need}; the earliest training start on {span} is "
            f"{cal[need].date()}."
        )
    gap = ts - tre - 1
    if gap < purge_n:
        latest_end = ts - purge_n - 1
        hint = (
            f"end the training window on or before {cal[latest_end].date()}"
            if latest_end >= 0
            else "move the test window later"
        )
        if tre + purge_n + 1 < len(cal):
            hint += f", or start the test window on or after {cal[tre + purge_n + 1].date()}"
        raise TuningError(
            f"the training window ends {cal[tre].date()} and the test window starts "
            f"{cal[ts].date()}: {gap} periods apart, but the purge is {purge_n} periods; {hint}."
        )
    return Windows(cal[trs], cal[tre], cal[ts], cal[te], purge_n, gap, need)
