"""The metrics table for people (mpo.report.tables): layout, formats, one column per cost term."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mpo.report import format_table, formatted_table
from mpo.report.tables import cost_columns, cost_header


@pytest.fixture
def table() -> pd.DataFrame:
    """Two policies' metrics as BacktestRun.table() writes them, plus a new cost term."""
    return pd.DataFrame(
        {
            "annual_return": [0.1147, 0.1145],
            "annual_volatility": [0.1210, 0.1187],
            "sharpe": [0.7495, 0.7604],
            "sortino": [0.9989, 1.0097],
            "max_drawdown": [0.1186, 0.1180],
            "annual_turnover": [0.0, 0.1731],
            "spread_cost": [0.0, 0.000173],
            "impact_cost": [0.0, 0.000054],
            "holding_cost": [0.0, 0.0],
            "fixed_fee_cost": [0.0, 0.0012],
            "sharpe_ci_low": [-0.6215, -0.6384],
            "sharpe_ci_high": [3.1104, 3.1328],
            "ms_per_period": [12.15, 18.02],
            "sharpe_vs_hold": [np.nan, 0.0109],
            "sharpe_vs_hold_ci_low": [np.nan, -0.0843],
            "sharpe_vs_hold_ci_high": [np.nan, 0.1420],
            "deflated_sharpe": [0.5, 0.6],  # not part of the layout: not displayed
        },
        index=["hold", "ew"],
    )


def test_layout_headers_and_cells(table):
    out = formatted_table(table)
    assert list(out.columns) == [
        "return",
        "vol",
        "Sharpe",
        "Sharpe 95% CI",
        "Sortino",
        "max DD",
        "turnover/yr",
        "spread/yr",
        "impact/yr",
        "holding/yr",
        "fixed_fee/yr",
        "dSharpe vs Hold",
        "dSharpe 95% CI",
        "ms/period",
    ]
    assert list(out.index) == ["hold", "ew"]
    ew = out.loc["ew"]
    assert ew["return"] == "11.45%" and ew["vol"] == "11.87%" and ew["max DD"] == "11.80%"
    assert ew["Sharpe"] == "+0.76" and ew["Sortino"] == "+1.01"
    assert ew["Sharpe 95% CI"] == "[-0.64, +3.13]"
    assert ew["turnover/yr"] == "0.17x" and ew["ms/period"] == "18.0"
    assert ew["spread/yr"] == "0.02%" and ew["fixed_fee/yr"] == "0.12%"
    assert ew["dSharpe vs Hold"] == "+0.01" and ew["dSharpe 95% CI"] == "[-0.08, +0.14]"
    # Hold has no difference to itself: blank, not "nan"
    assert out.loc["hold", "dSharpe vs Hold"] == "" and out.loc["hold", "dSharpe 95% CI"] == ""


def test_a_new_cost_term_shows_in_the_text_table(table):
    text = format_table(table)
    header, hold, ew = text.splitlines()
    assert "fixed_fee/yr" in header and "nan" not in text
    assert header.index("holding/yr") < header.index("fixed_fee/yr") < header.index("dSharpe")
    assert ew.split()[0] == "ew" and "0.12%" in ew


def test_cost_columns_keep_the_tables_order(table):
    reordered = table[["fixed_fee_cost", "impact_cost", "sharpe", "spread_cost"]]
    assert cost_columns(reordered) == ["fixed_fee_cost", "impact_cost", "spread_cost"]
    assert list(formatted_table(reordered).columns) == [
        "Sharpe",
        "fixed_fee/yr",
        "impact/yr",
        "spread/yr",
    ]
    assert cost_header("short_borrow_cost") == "short_borrow/yr"


def test_absent_metrics_are_skipped():
    out = formatted_table(pd.DataFrame({"sharpe": [1.234]}, index=["spo"]))
    assert list(out.columns) == ["Sharpe"] and out.loc["spo", "Sharpe"] == "+1.23"
    assert formatted_table(pd.DataFrame(index=["spo"])).shape == (1, 0)
