"""Performance statistics of backtests.

All functions take per-period simple returns (a pandas Series indexed by date)
and annualise with ``periods_per_year`` inferred from the dates unless given.
Sharpe and Sortino ratios are computed on returns in excess of the cash
return.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

__all__ = [
    "annualized_return",
    "annualized_volatility",
    "bootstrap_sharpe_ci",
    "max_drawdown",
    "periods_per_year",
    "sharpe_ratio",
    "sortino_ratio",
    "summary",
]


def periods_per_year(index: pd.DatetimeIndex) -> float:
    """Average number of periods per year implied by a date index."""
    if len(index) < 2:
        return 252.0
    years = (index[-1] - index[0]).days / 365.25
    return (len(index) - 1) / years if years > 0 else 252.0


def annualized_return(returns: pd.Series, ppy: float) -> float:
    """Geometric annualised return (CAGR)."""
    growth = float(np.prod(1.0 + returns.to_numpy()))
    return growth ** (ppy / len(returns)) - 1.0 if growth > 0 else -1.0


def annualized_volatility(returns: pd.Series, ppy: float) -> float:
    """Sample standard deviation times ``sqrt(ppy)``."""
    return float(returns.std(ddof=1) * np.sqrt(ppy))


def sharpe_ratio(excess: np.ndarray, ppy: float) -> float:
    """Annualised Sharpe ratio of excess returns (NaN if they have no variance)."""
    excess = np.asarray(excess, dtype=float)
    sd = excess.std(ddof=1)
    return float(excess.mean() / sd * np.sqrt(ppy)) if sd > 0 else float("nan")


def sortino_ratio(excess: np.ndarray, ppy: float) -> float:
    """Annualised Sortino ratio: mean excess over downside deviation (target 0)."""
    excess = np.asarray(excess, dtype=float)
    downside = np.sqrt(np.mean(np.minimum(excess, 0.0) ** 2))
    return float(excess.mean() / downside * np.sqrt(ppy)) if downside > 0 else float("nan")


def max_drawdown(returns: pd.Series) -> float:
    """Largest peak-to-trough loss of the compounded value, as a positive fraction."""
    value = np.cumprod(1.0 + returns.to_numpy())
    value = np.concatenate([[1.0], value])
    peak = np.maximum.accumulate(value)
    return float(np.max(1.0 - value / peak))


def bootstrap_sharpe_ci(
    excess: np.ndarray,
    ppy: float,
    *,
    n_boot: int = 2000,
    block: int = 21,
    level: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Stationary-bootstrap (Politis-Romano) confidence interval of the Sharpe ratio.

    Blocks of geometric length with mean ``block`` keep the serial dependence
    of daily returns. ``excess`` may be 2-D ``(T, k)``: then the same resampled
    dates are used for every column and the CI is of ``column 0 - column 1``'s
    Sharpe difference (paired bootstrap).
    """
    x = np.asarray(excess, dtype=float)
    paired = x.ndim == 2
    T = x.shape[0]
    if T < 3:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    p = 1.0 / block
    starts = rng.integers(0, T, size=(n_boot, T))
    new_block = rng.random((n_boot, T)) < p
    idx = np.empty((n_boot, T), dtype=np.int64)
    idx[:, 0] = starts[:, 0]
    for i in range(1, T):
        idx[:, i] = np.where(new_block[:, i], starts[:, i], (idx[:, i - 1] + 1) % T)
    sample = x[idx]  # (n_boot, T) or (n_boot, T, k)
    mean = sample.mean(axis=1)
    sd = sample.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        sr = mean / sd * np.sqrt(ppy)
    if paired:
        sr = sr[:, 0] - sr[:, 1]
    alpha = (1.0 - level) / 2.0
    lo, hi = np.nanquantile(sr, [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def summary(
    returns: pd.Series,
    cash_returns: pd.Series,
    turnover: pd.Series | None = None,
    costs: pd.DataFrame | None = None,
    value: pd.Series | None = None,
    ppy: float | None = None,
) -> dict[str, float]:
    """The standard metrics table row of one backtest.

    ``costs`` holds dollar costs per period (columns spread/impact/holding) and
    ``value`` the portfolio value at the start of each period; costs are
    reported as annualised fractions of portfolio value.
    """
    ppy = periods_per_year(returns.index) if ppy is None else ppy
    excess = (returns - cash_returns.reindex(returns.index)).to_numpy()
    out = {
        "annual_return": annualized_return(returns, ppy),
        "annual_volatility": annualized_volatility(returns, ppy),
        "sharpe": sharpe_ratio(excess, ppy),
        "sortino": sortino_ratio(excess, ppy),
        "max_drawdown": max_drawdown(returns),
    }
    if turnover is not None:
        out["annual_turnover"] = float(turnover.reindex(returns.index).mean() * ppy)
    if costs is not None and value is not None:
        frac = costs.reindex(returns.index).div(value.reindex(returns.index), axis=0)
        for col in frac.columns:
            out[f"{col}_cost"] = float(frac[col].mean() * ppy)
    return out
