"""Spec factories shared by test modules (importable: ``from spec_helpers import spec_dict``).

A plain module, not ``conftest``: several directories have a conftest.py, so
``from conftest import ...`` is ambiguous under pytest-xdist.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mpo.data.market import MarketData

#: CLARABEL tolerances for comparisons against hand-written problems.
TIGHT = {"tol_gap_abs": 1e-10, "tol_gap_rel": 1e-10, "tol_feas": 1e-10}


def spec_dict(kind: str = "spo", **sections) -> dict:
    """A small, fast spec (short lookbacks) as a dict; override sections by keyword."""
    base = {
        "name": kind,
        "kind": kind,
        "forecast": {"kind": "rolling_mean", "lookback": 60},
        "risk": {"kind": "full", "lookback": 60},
        "objective": {
            "gamma_risk": 5.0,
            "gamma_trade": 1.0,
            "planning_horizon": 1 if kind != "mpo" else 3,
        },
        "constraints": {"long_only": True, "max_weight": 0.3, "leverage": 1.0},
        "costs": {"half_spread": 0.0005, "impact": 1.0},
        "backtest": {"solver_options": TIGHT},
    }
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return base


def make_market(prices: pd.DataFrame, seed: int = 0, cash: float = 0.0) -> MarketData:
    """Real prices plus seeded synthetic dollar volumes (so the impact term varies)."""
    rng = np.random.default_rng(seed)
    vol = pd.DataFrame(
        np.exp(rng.normal(np.log(5e7), 0.4, size=prices.shape)),
        index=prices.index,
        columns=prices.columns,
    )
    return MarketData.from_prices(prices, vol, cash_return=cash, name="test")
