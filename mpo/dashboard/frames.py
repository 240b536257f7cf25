"""The tables and series the dashboard draws, from the views of :mod:`mpo.dashboard.runs`.

Plain pandas in, plain pandas out (long format where a chart colours by a
column), so that every picture's data can be checked without a browser.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mpo.dashboard.runs import PolicySeries
from mpo.report.tables import cost_columns, cost_term

__all__ = [
    "annual_costs",
    "best_so_far",
    "cumulative_costs",
    "drawdowns",
    "equity",
    "fold_sharpes",
    "long",
    "param_frame",
    "param_pair",
    "train_table",
    "weights",
]


def equity(series: dict[str, PolicySeries]) -> pd.DataFrame:
    """Growth of 1 net of costs, one column per policy (the report's equity curves)."""
    return pd.DataFrame(
        {
            name: (1.0 + s.returns["net_return"].astype(float)).cumprod()
            for name, s in series.items()
        }
    )


def drawdowns(series: dict[str, PolicySeries]) -> pd.DataFrame:
    """Drawdown from the running peak of the growth of 1 (<= 0), one column per policy."""
    growth = equity(series)
    peak = np.maximum.accumulate(growth.clip(lower=0).fillna(0.0).to_numpy(), axis=0)
    peak = np.maximum(peak, 1.0)  # the peak includes the starting value 1
    return growth / peak - 1.0


def long(frame: pd.DataFrame, column: str, value: str) -> pd.DataFrame:
    """A wide frame indexed by date -> ``date, <column>, <value>`` rows (for coloured lines)."""
    out = frame.rename_axis("date").reset_index().melt("date", var_name=column, value_name=value)
    return out.dropna(subset=[value])


def weights(series: PolicySeries, top: int = 12) -> pd.DataFrame:
    """Post-trade weights in long format; beyond the ``top`` largest names, one ``other`` band."""
    w = series.weights.astype(float)
    order = w.abs().mean().sort_values(ascending=False).index
    shown = w[list(order[:top])]
    if len(order) > top:
        shown = shown.assign(other=w[list(order[top:])].sum(axis=1))
    return long(shown, "asset", "weight")


def cumulative_costs(series: PolicySeries) -> pd.DataFrame:
    """Cumulative dollars charged per cost term over time (long format: date, term, dollars)."""
    costs = series.costs.astype(float).fillna(0.0).cumsum()
    return long(costs, "term", "dollars")


def annual_costs(metrics: pd.DataFrame) -> pd.DataFrame:
    """Per policy and cost term the yearly cost as a fraction of value (``<term>_cost`` columns),
    long format: policy, term, cost."""
    columns = cost_columns(metrics)
    frame = metrics[columns].rename(columns=cost_term).rename_axis("policy").reset_index()
    return frame.melt("policy", var_name="term", value_name="cost").fillna({"cost": 0.0})


def best_so_far(trials: pd.DataFrame) -> pd.DataFrame:
    """Completed trials by number with the best value so far (the study maximises)."""
    done = trials[trials["state"] == "COMPLETE"].sort_values("number")
    out = done[["number", "value"]].astype(float).assign(best=lambda d: d["value"].cummax())
    return out.reset_index(drop=True)


def param_frame(trials: pd.DataFrame, param: str) -> pd.DataFrame:
    """``number, state, value, <param>`` of the trials that tried ``param`` (numeric values)."""
    column = f"param_{param}"
    frame = trials[["number", "state", "value", column]].rename(columns={column: param})
    frame[param] = pd.to_numeric(frame[param], errors="coerce")
    return frame.dropna(subset=[param]).reset_index(drop=True)


def param_pair(trials: pd.DataFrame, first: str, second: str) -> pd.DataFrame:
    """``number, <first>, <second>, value`` of the completed trials that tried both."""
    done = trials[trials["state"] == "COMPLETE"]
    frame = done[["number", f"param_{first}", f"param_{second}", "value"]]
    frame = frame.rename(columns={f"param_{first}": first, f"param_{second}": second})
    return frame.apply(pd.to_numeric, errors="coerce").dropna().reset_index(drop=True)


def train_table(metrics: pd.DataFrame) -> pd.DataFrame:
    """One row per model: Sharpe, turnover and cost per split (as ``mpo train`` prints them)."""
    models = list(dict.fromkeys(metrics.index.get_level_values("model")))
    wide = metrics.unstack("split").reindex(models)  # the file's order, not sorted
    keep = [m for m in ("sharpe", "annual_return", "annual_turnover", "annual_cost") if m in wide]
    out = wide[keep]
    out.columns = [f"{split} {metric}" for metric, split in out.columns]
    order = [c for s in ("val", "test", "train") for c in out.columns if c.startswith(f"{s} ")]
    return out[order + [c for c in out.columns if c not in order]]


def fold_sharpes(folds: pd.DataFrame, universe: str) -> pd.DataFrame:
    """``fold, spec, test_sharpe`` of one universe (the per-fold chart)."""
    rows = folds[folds["universe"] == universe] if "universe" in folds else folds
    return rows[["fold", "spec", "test_sharpe"]].dropna().reset_index(drop=True)
