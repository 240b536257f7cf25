"""Performance statistics of backtests.

All functions take per-period simple returns (a pandas Series indexed by date)
and annualise with ``periods_per_year`` inferred from the dates unless given.
Sharpe and Sortino ratios are computed on returns in excess of the cash
return.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

__all__ = [
    "annualized_return",
    "annualized_volatility",
    "bootstrap_sharpe_ci",
    "deflated_sharpe_ratio",
    "expected_max_sharpe",
    "max_drawdown",
    "periods_per_year",
    "probabilistic_sharpe_ratio",
    "psr_from_moments",
    "return_moments",
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
    """Annualised Sharpe ratio of excess returns (NaN if they have no variance).

    The one Sharpe convention of mpo: mean over the ddof=1 standard deviation,
    times ``sqrt(ppy)``. Backtests, tuning, reports and training evaluation use
    this function; the differentiable loss :func:`mpo.learn.losses.sharpe_loss`
    computes the same quantity in torch (tested equal to 1e-12).
    """
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


def stationary_bootstrap_indices(
    T: int, n_boot: int = 2000, block: int = 21, seed: int = 0
) -> np.ndarray:
    """``(n_boot, T)`` resampled positions of the stationary bootstrap (Politis-Romano).

    Blocks start at uniform positions and have geometric lengths of mean
    ``block`` (wrapping around the end), which keeps the serial dependence of
    daily returns. Using the same indices for several series pairs them.
    """
    rng = np.random.default_rng(seed)
    p = 1.0 / block
    starts = rng.integers(0, T, size=(n_boot, T))
    new_block = rng.random((n_boot, T)) < p
    idx = np.empty((n_boot, T), dtype=np.int64)
    idx[:, 0] = starts[:, 0]
    for i in range(1, T):
        idx[:, i] = np.where(new_block[:, i], starts[:, i], (idx[:, i - 1] + 1) % T)
    return idx


def _boot_sharpes(x: np.ndarray, idx: np.ndarray, ppy: float) -> np.ndarray:
    """Annualised Sharpe of every column of ``x`` (``(T, ...)``) on every bootstrap sample."""
    sample = x[idx]  # (n_boot, T, ...)
    mean = sample.mean(axis=1)
    sd = sample.std(axis=1, ddof=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return mean / sd * np.sqrt(ppy)


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
    test = bootstrap_sharpe_test(excess, ppy, n_boot=n_boot, block=block, level=level, seed=seed)
    return test["ci_low"], test["ci_high"]


def bootstrap_sharpe_test(
    excess: np.ndarray,
    ppy: float,
    *,
    n_boot: int = 2000,
    block: int = 21,
    level: float = 0.95,
    seed: int = 0,
) -> dict[str, float]:
    """Sharpe ratio (or paired difference) with its bootstrap CI and two-sided p-value.

    ``excess`` is ``(T,)``, ``(T, 2)`` (the statistic is the Sharpe of column
    0 minus that of column 1, on the same resampled dates) or ``(T, U, 2)``
    (the mean over ``U`` universes sharing the dates of their paired
    differences: the pooled difference, resampled by date so the universes'
    correlation is kept). ``p`` is ``2 min(P*[s <= 0], P*[s >= 0])`` under
    the bootstrap distribution ``P*``: the percentile test of "no difference".
    """
    x = np.asarray(excess, dtype=float)
    T = x.shape[0]
    nan = {"estimate": float("nan"), "ci_low": float("nan"), "ci_high": float("nan")}
    if T < 3:
        return {**nan, "p": float("nan")}

    def stat(sr: np.ndarray) -> np.ndarray:
        if x.ndim == 1:
            return sr
        d = sr[..., 0] - sr[..., 1]
        return d.mean(axis=-1) if x.ndim == 3 else d

    with np.errstate(divide="ignore", invalid="ignore"):
        point = stat((x.mean(axis=0) / x.std(axis=0, ddof=1) * np.sqrt(ppy))[None])[0]
    boot = stat(_boot_sharpes(x, stationary_bootstrap_indices(T, n_boot, block, seed), ppy))
    boot = boot[np.isfinite(boot)]
    if boot.size == 0:
        return {**nan, "estimate": float(point), "p": float("nan")}
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha])
    p = min(1.0, 2.0 * min(np.mean(boot <= 0), np.mean(boot >= 0)))
    return {"estimate": float(point), "ci_low": float(lo), "ci_high": float(hi), "p": float(p)}


def holm(pvalues: dict[str, float]) -> dict[str, float]:
    """Holm-Bonferroni adjusted p-values (family-wise error control), NaNs left out."""
    items = sorted(((p, k) for k, p in pvalues.items() if np.isfinite(p)), key=lambda x: x[0])
    m, out, running = len(items), {k: float("nan") for k in pvalues}, 0.0
    for i, (p, k) in enumerate(items):
        running = max(running, min(1.0, (m - i) * p))
        out[k] = running
    return out


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


_EULER_GAMMA = 0.5772156649015329


def return_moments(excess: np.ndarray) -> dict[str, float]:
    """Length, per-period Sharpe, skewness and (non-excess) kurtosis of excess returns.

    Enough to compute :func:`probabilistic_sharpe_ratio` later without the series.
    """
    x = np.asarray(excess, dtype=float)
    sd = float(x.std(ddof=1)) if x.size > 1 else 0.0
    ok = x.size >= 3 and sd > 0
    return {
        "T": int(x.size),
        "sharpe": float(x.mean() / sd) if ok else float("nan"),
        "skew": float(stats.skew(x, bias=False)) if ok else float("nan"),
        "kurt": float(stats.kurtosis(x, fisher=False, bias=False)) if ok else float("nan"),
    }


def psr_from_moments(moments: dict[str, float], benchmark_sr: float = 0.0) -> float:
    """:func:`probabilistic_sharpe_ratio` from :func:`return_moments`' output."""
    T, sr, skew, kurt = moments["T"], moments["sharpe"], moments["skew"], moments["kurt"]
    if T < 3 or not np.isfinite(sr):
        return float("nan")
    denom = 1.0 - skew * sr + (kurt - 1.0) / 4.0 * sr**2
    if not denom > 0:
        return float("nan")
    return float(stats.norm.cdf((sr - benchmark_sr) * np.sqrt(T - 1) / np.sqrt(denom)))


def probabilistic_sharpe_ratio(excess: np.ndarray, benchmark_sr: float = 0.0) -> float:
    """Probability that the true per-period Sharpe ratio exceeds ``benchmark_sr``.

    Bailey & Lopez de Prado (2012), with the skewness and (non-excess)
    kurtosis of ``excess`` (per-period returns in excess of cash)::

        PSR = Phi((SR - SR*) sqrt(T - 1) / sqrt(1 - skew SR + (kurt - 1) / 4 SR^2))

    ``SR`` and ``benchmark_sr`` are per period (not annualised).
    """
    return psr_from_moments(return_moments(excess), benchmark_sr)


def expected_max_sharpe(n_trials: int, sharpe_variance: float) -> float:
    """Expected maximum of ``n_trials`` per-period Sharpe ratios whose true value is zero.

    The deflated Sharpe ratio's threshold (Bailey & Lopez de Prado 2014, eq. 2)::

        SR0 = sqrt(V) ((1 - g) Phi^-1(1 - 1/N) + g Phi^-1(1 - 1/(N e)))

    with ``V`` the variance of the trials' per-period Sharpe ratios and ``g``
    the Euler-Mascheroni constant. Zero for a single trial.
    """
    if n_trials < 1:
        raise ValueError(f"n_trials must be >= 1, got {n_trials}.")
    if n_trials == 1 or not sharpe_variance > 0:
        return 0.0
    z1 = stats.norm.ppf(1.0 - 1.0 / n_trials)
    z2 = stats.norm.ppf(1.0 - 1.0 / (n_trials * np.e))
    return float(np.sqrt(sharpe_variance) * ((1 - _EULER_GAMMA) * z1 + _EULER_GAMMA * z2))


def deflated_sharpe_ratio(
    excess: np.ndarray | dict[str, float],
    trial_sharpes: np.ndarray,
    n_trials: int | None = None,
) -> dict[str, float]:
    """Deflated Sharpe ratio of the selected strategy among several trials.

    ``excess`` are the selected strategy's per-period excess returns (or their
    :func:`return_moments`) and ``trial_sharpes`` the per-period (not
    annualised) Sharpe ratios of every trial tried, the selected one included,
    on the same window. The DSR is the probabilistic Sharpe ratio against the
    Sharpe ratio that the best of ``N`` skill-less trials would reach by luck
    (:func:`expected_max_sharpe`): the probability that the selected
    strategy's true Sharpe is positive after the selection among ``N``
    trials. Treating every trial as independent makes ``N`` an upper bound of
    the effective number of trials, so the correction is conservative.
    ``n_trials`` (default: the number of finite ``trial_sharpes``) counts
    trials tried without a full-window Sharpe too, e.g. pruned ones.
    """
    moments = excess if isinstance(excess, dict) else return_moments(excess)
    s = np.asarray(trial_sharpes, dtype=float)
    s = s[np.isfinite(s)]
    n = max(int(s.size), 1) if n_trials is None else max(int(n_trials), int(s.size), 1)
    var = float(s.var(ddof=1)) if s.size > 1 else 0.0
    sr0 = expected_max_sharpe(n, var)
    return {
        "dsr": psr_from_moments(moments, sr0),
        "psr": psr_from_moments(moments, 0.0),
        "sr0_per_period": sr0,
        "n_trials": n,
        "trial_sharpe_variance": var,
    }
