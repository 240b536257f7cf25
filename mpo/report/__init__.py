"""Reports of backtest runs: the metrics table for people, the HTML report and its figures.

- :mod:`mpo.report.tables`: :func:`formatted_table` / :func:`format_table`
  (percentages, CIs, one ``<term>/yr`` column per cost term);
- :mod:`mpo.report.figures`: the matplotlib figures;
- :mod:`mpo.report.html`: :func:`write_report`, one self-contained HTML file;
- :mod:`mpo.report.walkforward`: :func:`write_walkforward_report`, the same for a
  finished walk-forward run folder (read from its files).

This layer reads results (:class:`~mpo.backtest.BacktestRun`); the command
line and the scripts import from it, never the other way round.
"""

from mpo.report.html import render_report, write_report
from mpo.report.tables import format_table, formatted_table
from mpo.report.walkforward import render_walkforward_report, write_walkforward_report

__all__ = [
    "format_table",
    "formatted_table",
    "render_report",
    "render_walkforward_report",
    "write_report",
    "write_walkforward_report",
]
