"""The metrics table for people: percentages, CIs in brackets, one column per cost term.

The layout is declared once (:data:`LAYOUT`) and read by the command line, the
scripts and the HTML report. Cost columns are not listed by hand: every metric
named ``<term>_cost`` (``spread_cost``, ``impact_cost``, ``holding_cost``, a
new term's ``fixed_fee_cost``...) is shown as a percentage headed
``<term>/yr``, in the order the metrics table has them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pandas as pd

__all__ = [
    "COST_SUFFIX",
    "LAYOUT",
    "cost_columns",
    "cost_header",
    "cost_term",
    "format_table",
    "formatted_table",
]

#: Metric columns ending in this suffix are per-year costs of one cost term.
COST_SUFFIX = "_cost"

Cells = Iterator[tuple[str, list[str]]]


def _pct(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.2%}"


def _signed(value: float) -> str:
    return "" if pd.isna(value) else f"{value:+.2f}"


def _times(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.2f}x"


def _ms(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.1f}"


def cost_columns(table: pd.DataFrame) -> list[str]:
    """The ``<term>_cost`` columns of ``table``, in its order."""
    return [str(c) for c in table.columns if str(c).endswith(COST_SUFFIX)]


def cost_term(column: str) -> str:
    """``"fixed_fee_cost"`` -> ``"fixed_fee"``."""
    return column.removesuffix(COST_SUFFIX)


def cost_header(column: str) -> str:
    """The display header of a cost column: ``"spread_cost"`` -> ``"spread/yr"``."""
    return f"{cost_term(column)}/yr"


@dataclass(frozen=True)
class Value:
    """One metric column shown with ``fmt`` under ``header`` (skipped when absent)."""

    column: str
    header: str
    fmt: Callable[[float], str]

    def cells(self, table: pd.DataFrame) -> Cells:
        if self.column in table:
            yield self.header, [self.fmt(v) for v in table[self.column]]


@dataclass(frozen=True)
class Interval:
    """The columns ``<stem>_low`` and ``<stem>_high`` as ``[+lo, +hi]`` (blank when NaN)."""

    stem: str
    header: str

    def cells(self, table: pd.DataFrame) -> Cells:
        low, high = f"{self.stem}_low", f"{self.stem}_high"
        if low in table and high in table:
            yield (
                self.header,
                [
                    "" if pd.isna(lo) or pd.isna(hi) else f"[{lo:+.2f}, {hi:+.2f}]"
                    for lo, hi in zip(table[low], table[high], strict=True)
                ],
            )


@dataclass(frozen=True)
class Costs:
    """Every ``<term>_cost`` column as a percentage headed ``<term>/yr``."""

    def cells(self, table: pd.DataFrame) -> Cells:
        for column in cost_columns(table):
            yield cost_header(column), [_pct(v) for v in table[column]]


#: The displayed columns, in order; metrics not named here are not displayed.
LAYOUT: tuple[Value | Interval | Costs, ...] = (
    Value("annual_return", "return", _pct),
    Value("annual_volatility", "vol", _pct),
    Value("sharpe", "Sharpe", _signed),
    Interval("sharpe_ci", "Sharpe 95% CI"),
    Value("sortino", "Sortino", _signed),
    Value("max_drawdown", "max DD", _pct),
    Value("annual_turnover", "turnover/yr", _times),
    Costs(),
    Value("sharpe_vs_hold", "dSharpe vs Hold", _signed),
    Interval("sharpe_vs_hold_ci", "dSharpe 95% CI"),
    Value("ms_per_period", "ms/period", _ms),
)


def _p(value: float) -> str:
    return "" if pd.isna(value) else f"{value:.3f}"


#: The columns of a walk-forward's stitched table (:mod:`mpo.research`).
WALKFORWARD_LAYOUT: tuple[Value | Interval | Costs, ...] = (
    Value("annual_return", "return", _pct),
    Value("annual_volatility", "vol", _pct),
    Value("sharpe", "Sharpe", _signed),
    Interval("sharpe_ci", "Sharpe 95% CI"),
    Value("max_drawdown", "max DD", _pct),
    Value("annual_turnover", "turnover/yr", _times),
    Costs(),
    Value("sharpe_vs_equal_weight", "dSharpe vs EW", _signed),
    Interval("sharpe_vs_equal_weight_ci", "dSharpe vs EW 95% CI"),
    Value("p_vs_equal_weight_holm", "p vs EW (Holm)", _p),
    Value("sharpe_vs_hold", "dSharpe vs Hold", _signed),
    Interval("sharpe_vs_hold_ci", "dSharpe vs Hold 95% CI"),
    Value("dsr", "DSR", _p),
)

#: The columns of the pooled multi-universe table.
AGGREGATE_LAYOUT: tuple[Value | Interval | Costs, ...] = (
    Value("n_universes", "universes", lambda v: "" if pd.isna(v) else f"{int(v)}"),
    Value("mean_sharpe", "mean Sharpe", _signed),
    Value("sd_sharpe", "sd", lambda v: "" if pd.isna(v) else f"{v:.2f}"),
    Value("win_rate_vs_equal_weight", "wins vs EW", _pct),
    Value("win_rate_vs_hold", "wins vs Hold", _pct),
    Value("mean_diff_vs_equal_weight", "mean dSharpe vs EW", _signed),
    Interval("mean_diff_vs_equal_weight_ci", "EW 95% CI"),
    Value("mean_diff_vs_hold", "mean dSharpe vs Hold", _signed),
    Interval("mean_diff_vs_hold_ci", "Hold 95% CI"),
)


def formatted_table(table: pd.DataFrame, layout=None) -> pd.DataFrame:
    """The metrics table as display strings.

    Parameters
    ----------
    table
        One row per policy, metric columns as written by
        :meth:`mpo.backtest.BacktestRun.table` (``annual_return``,
        ``sharpe_ci_low``/``sharpe_ci_high``, ``<term>_cost``...).

    Returns
    -------
    pandas.DataFrame
        Same index, the columns of :data:`LAYOUT` present in ``table``, with
        display headers (``return``, ``Sharpe 95% CI``, ``spread/yr``...).
    """
    out = pd.DataFrame(index=table.index)
    for column in LAYOUT if layout is None else layout:
        for header, cells in column.cells(table):
            out[header] = cells
    return out


def format_table(table: pd.DataFrame, layout=None) -> str:
    """:func:`formatted_table` as plain text, for terminals and logs (``layout``: the columns,
    default :data:`LAYOUT`)."""
    return formatted_table(table, layout).to_string()
