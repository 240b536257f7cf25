"""The risk manager's limits as cvxportfolio constraints: groups, participation, liquidity.

* :class:`GroupLimits` — from a ticker -> group table (e.g. sectors): the net
  weight of every group between ``group_min`` and ``group_max`` (per-group
  overrides in ``group_bounds``), and the gross weight (sum of ``|w|``) at
  most ``group_gross_max``;
* :class:`ParticipationLimit` — every trade at most ``participation`` times
  the planner's dollar-volume estimate (the cost model's ADV estimate, known
  at ``t``): ``|z_i| * v <= p * V_i``;
* :class:`LiquidityScreen` — a name whose ADV estimate is below ``min_adv``
  may only be reduced towards zero (no new or larger positions).

All three are linear in the weights, hold at every planning step of MPO, and
are DPP-compliant (parameters only multiply variables elementwise). The group
table is read once (``ticker,group`` CSV, header optional).
"""

from __future__ import annotations

import logging
from pathlib import Path

import cvxportfolio as cvx
import cvxpy as cp
import numpy as np
import pandas as pd

from mpo.errors import DataError, SpecError

__all__ = [
    "GroupLimits",
    "LiquidityScreen",
    "ParticipationLimit",
    "group_table",
    "limits_of",
]

logger = logging.getLogger(__name__)


def group_table(path: str | Path, tickers, column: str | None = None) -> pd.Series:
    """``ticker -> group`` for ``tickers`` from a CSV with a ``ticker`` column.

    ``column`` names the group column (e.g. ``sector`` or ``industry_group``
    of ``data/sectors/sp20.csv``); it may be omitted when the table has one
    other column. Every ticker of the universe needs a group (a missing one
    is an error naming it); rows for other tickers are ignored.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"group table {path} does not exist: give a CSV with a ticker column and a group "
            "column (e.g. data/sectors/sp20.csv)."
        )
    try:
        raw = pd.read_csv(path, dtype=str, skipinitialspace=True)
    except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as exc:
        raise DataError(f"cannot read group table {path}: {exc}") from None
    raw.columns = [str(c).strip() for c in raw.columns]
    others = [c for c in raw.columns if c != "ticker"]
    if "ticker" not in raw.columns or not others:
        raise DataError(
            f"group table {path} has columns {list(raw.columns)}; it needs a 'ticker' column "
            "and a group column (e.g. ticker,sector)."
        )
    if column is None:
        if len(others) > 1:
            raise DataError(
                f"group table {path} has several group columns {others}: choose one with "
                "[constraints] group_column."
            )
        column = others[0]
    if column not in others:
        raise DataError(f"group table {path} has no column {column!r}; its columns: {others}.")
    frame = raw[["ticker", column]].apply(lambda c: c.str.strip())
    empty = frame.isna().any(axis=1) | (frame == "").any(axis=1)
    if empty.any():
        row = int(np.flatnonzero(empty.to_numpy())[0])
        raise DataError(f"group table {path}: row {row + 2} has an empty ticker or {column}.")
    dup = frame["ticker"][frame["ticker"].duplicated()].unique()
    if len(dup):
        raise DataError(f"group table {path} lists ticker(s) {list(dup)} more than once.")
    table = frame.set_index("ticker")[column]
    missing = [t for t in tickers if t not in table.index]
    if missing:
        raise DataError(
            f"group table {path} has no {column} for {missing}; add a row per ticker (a group "
            "such as 'other' is fine)."
        )
    return table.reindex(list(tickers))


class GroupLimits(cvx.constraints.Constraint):
    """``lower_g <= sum_{i in g} w_i <= upper_g`` and ``sum_{i in g} |w_i| <= gross_g``.

    ``upper``, ``lower`` and ``gross`` map a group to its bound, or to None
    for no bound on that group.
    """

    def __init__(self, groups: pd.Series, upper=None, lower=None, gross=None):
        self.groups = groups
        self.names = sorted(groups.unique())
        self.bounds = {
            side: {g: v for g, v in (b or {}).items() if v is not None}
            for side, b in (("upper", upper), ("lower", lower), ("gross", gross))
        }

    def initialize_estimator(self, universe, **kwargs):
        assets = list(universe[:-1])
        if assets != list(self.groups.index):
            missing = [t for t in assets if t not in self.groups.index]
            raise SpecError(f"group limits: the universe has tickers without a group: {missing}.")
        self._exposure = pd.DataFrame(
            {name: (self.groups == name).astype(float) for name in self.names}
        ).to_numpy()  # n x G indicator

    def _rows(self, side: str) -> tuple[np.ndarray, np.ndarray]:
        b = self.bounds[side]
        cols = [j for j, g in enumerate(self.names) if g in b]
        return self._exposure[:, cols].T, np.array([b[self.names[j]] for j in cols], dtype=float)

    def compile_to_cvxpy(self, w_plus, z, w_plus_minus_w_bm, **kwargs):
        w = w_plus[:-1]
        out = []
        for side in ("upper", "lower", "gross"):
            if not self.bounds[side]:
                continue
            e, value = self._rows(side)
            if side == "upper":
                out.append(e @ w <= value)
            elif side == "lower":
                out.append(e @ w >= value)
            else:
                out.append(e @ cp.abs(w) <= value)
        return out


class ParticipationLimit(cvx.constraints.Constraint):
    """``|z_i| <= p * V_i / v``: trades at most ``p`` of the planner's ADV estimate ``V_i``."""

    def __init__(self, fraction: float, estimates):
        self.fraction = float(fraction)
        self.estimates = estimates

    def initialize_estimator(self, universe, **kwargs):
        self._bound = cp.Parameter(len(universe) - 1, nonneg=True)

    def values_in_time(self, t, past_returns, past_volumes, current_portfolio_value, **kwargs):
        tickers = past_returns.columns[:-1]
        adv = self.estimates.planner_volume(t, past_volumes, tickers)
        self._bound.value = np.maximum(self.fraction * adv / current_portfolio_value, 0.0)

    def compile_to_cvxpy(self, w_plus, z, w_plus_minus_w_bm, **kwargs):
        return [cp.abs(z[:-1]) <= self._bound]


class LiquidityScreen(cvx.constraints.Constraint):
    """Names with ADV estimate below ``min_adv`` may only shrink: ``w+_i`` between 0 and ``w_i``."""

    def __init__(self, min_adv: float, estimates):
        self.min_adv = float(min_adv)
        self.estimates = estimates

    def initialize_estimator(self, universe, **kwargs):
        n = len(universe) - 1
        self._mask = cp.Parameter(n, nonneg=True)
        self._high = cp.Parameter(n, nonneg=True)
        self._low = cp.Parameter(n, nonpos=True)

    def values_in_time(self, t, past_returns, past_volumes, current_weights, **kwargs):
        tickers = past_returns.columns[:-1]
        adv = self.estimates.planner_volume(t, past_volumes, tickers)
        mask = (adv < self.min_adv).astype(float)
        w = np.asarray(current_weights, dtype=float)[:-1]
        self._mask.value = mask
        self._high.value = mask * np.maximum(w, 0.0)
        self._low.value = mask * np.minimum(w, 0.0)

    def compile_to_cvxpy(self, w_plus, z, w_plus_minus_w_bm, **kwargs):
        held = cp.multiply(self._mask, w_plus[:-1])
        return [held <= self._high, held >= self._low]


def limits_of(spec, tickers) -> list:
    """The ``[constraints]`` group, participation and liquidity limits of ``spec``."""
    from mpo.policies.base import cost_model

    c = spec.constraints
    out: list = []
    if c.groups is not None:
        table = group_table(c.groups, tickers, c.group_column)
        names = sorted(table.unique())
        unknown = sorted(set(c.group_bounds) - set(names))
        if unknown:
            raise SpecError(
                f"[constraints.group_bounds] names group(s) {unknown} that the group table "
                f"{c.groups} does not have; its groups: {names}."
            )

        def per_group(attr: str, default) -> dict:
            values = {g: getattr(c.group_bounds.get(g), attr, None) for g in names}
            return {g: default if v is None else v for g, v in values.items()}

        out.append(
            GroupLimits(
                table,
                upper=per_group("max", c.group_max),
                lower=per_group("min", c.group_min),
                gross=per_group("gross_max", c.group_gross_max),
            )
        )
    estimates = cost_model(spec).estimates
    if c.participation is not None:
        out.append(ParticipationLimit(c.participation, estimates))
    if c.min_adv is not None:
        out.append(LiquidityScreen(c.min_adv, estimates))
    return out
