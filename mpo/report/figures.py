"""The report's figures, as matplotlib figures (the HTML module embeds them).

Each function draws one figure from a :class:`~mpo.backtest.BacktestRun` or
its metrics table; :func:`report_figures` lists them in report order with
their keys and captions.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from mpo.report.tables import cost_columns, cost_term

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mpo.backtest import BacktestRun

__all__ = [
    "costs_figure",
    "drawdowns_figure",
    "equity_figure",
    "report_figures",
    "weights_figure",
]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _percent_axis(ax) -> None:
    from matplotlib.ticker import PercentFormatter

    ax.yaxis.set_major_formatter(PercentFormatter(1.0))


def equity_figure(run: BacktestRun) -> Figure:
    """Growth of 1 per policy, net of costs."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 4.2))
    for name, r in run.results.items():
        growth = (1.0 + r.returns).cumprod()
        ax.plot(growth.index, growth.to_numpy(), label=name, lw=1.3)
    ax.set_ylabel("growth of 1 (net of costs)")
    ax.legend(fontsize=8, ncol=min(len(run.results), 4))
    ax.grid(alpha=0.3)
    return fig


def drawdowns_figure(run: BacktestRun) -> Figure:
    """Drawdown from the running peak per policy."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 3.2))
    for name, r in run.results.items():
        growth = (1.0 + r.returns).cumprod()
        dd = growth / np.maximum.accumulate(growth.clip(lower=0).to_numpy()) - 1.0
        ax.plot(dd.index, dd.to_numpy(), label=name, lw=1.0)
    _percent_axis(ax)
    ax.set_ylabel("drawdown")
    ax.legend(fontsize=8, ncol=min(len(run.results), 4))
    ax.grid(alpha=0.3)
    return fig


def weights_figure(run: BacktestRun) -> Figure:
    """Post-trade weights over time, one stacked panel per policy."""
    plt = _pyplot()
    names = list(run.results)
    fig, axes = plt.subplots(
        len(names), 1, figsize=(10, 2.2 * len(names)), sharex=True, squeeze=False
    )
    cols: list = []
    for ax, name in zip(axes[:, 0], names, strict=True):
        w = run.results[name].weights
        cols = list(w.columns)
        colors = plt.cm.tab20(np.arange(len(cols)) % 20)
        ax.stackplot(w.index, w.to_numpy().T.clip(min=0), labels=cols, colors=colors, lw=0)
        ax.set_ylim(0, max(1.0, float(w.clip(lower=0).sum(axis=1).max())))
        ax.set_ylabel(name, fontsize=8)
        _percent_axis(ax)
    axes[0, 0].legend(fontsize=6, ncol=max(1, min(len(cols), 11)), loc="upper left",
                      bbox_to_anchor=(0, 1.45))  # fmt: skip
    return fig


def costs_figure(table: pd.DataFrame) -> Figure:
    """Annual turnover and, stacked, the per-year cost of every ``<term>_cost`` column."""
    plt = _pyplot()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(table))
    a1.bar(x, table.get("annual_turnover", pd.Series(0.0, index=table.index)).to_numpy())
    a1.set_xticks(x, table.index, rotation=30, ha="right", fontsize=8)
    a1.set_ylabel("turnover per year (x)")
    bottom = np.zeros(len(table))
    for column in cost_columns(table):
        values = table[column].astype(float).fillna(0.0).to_numpy()
        a2.bar(x, values, bottom=bottom, label=cost_term(column))
        bottom = bottom + values
    a2.set_xticks(x, table.index, rotation=30, ha="right", fontsize=8)
    _percent_axis(a2)
    a2.set_ylabel("cost per year (of value)")
    if cost_columns(table):
        a2.legend(fontsize=8)
    fig.tight_layout()
    return fig


def report_figures(run: BacktestRun) -> list[tuple[str, str, Figure]]:
    """``(key, caption, figure)`` of every figure of the report, in order."""
    table = run.table()
    terms = ", ".join(cost_term(c) for c in cost_columns(table)) or "none"
    return [
        ("equity", "Equity curves", equity_figure(run)),
        ("drawdowns", "Drawdowns", drawdowns_figure(run)),
        ("weights", "Weights over time (post-trade, cash included)", weights_figure(run)),
        ("costs", f"Turnover and costs per year by term ({terms})", costs_figure(table)),
    ]
