"""Classic forecasters, as cvxportfolio data objects.

Each forecaster is a plain object with ``values_in_time(past_returns, ...)``
(deliberately *not* a ``cvxportfolio.estimator.Estimator`` subclass): cvxportfolio
wraps plain objects in a ``DataEstimator`` that aligns the returned Series or
DataFrame to the current universe **by ticker name** and raises on NaN. They
see only ``past_returns`` (rows strictly before ``t``), which is our look-ahead
guard. Windows are counted in periods (rows), the unit of our specs.

Expensive results are shared across the steps of a multi-period optimisation
through cvxportfolio's per-policy ``cache`` (only the current ``t`` is kept).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pandas as pd

from mpo.costs import ewm_last
from mpo.errors import DataError, SpecError

__all__ = [
    "RollingMeanForecast",
    "EwmaMeanForecast",
    "LinearRegressionForecast",
    "RollingCovariance",
]

logger = logging.getLogger(__name__)


def _assets(past_returns: pd.DataFrame) -> pd.DataFrame:
    """Past returns without the cash column (cvxportfolio keeps cash last)."""
    return past_returns.iloc[:, :-1]


def _cached(cache: dict | None, key: tuple, t: Any, compute):
    """Value of ``compute()`` for time ``t``, shared through ``cache`` across MPO steps."""
    if cache is None:
        return compute()
    hit = cache.get(key)
    if hit is not None and hit[0] == t:
        return hit[1]
    value = compute()
    cache[key] = (t, value)
    return value


def _check_window(name: str, value: int, minimum: int = 2) -> int:
    if not isinstance(value, int | np.integer) or value < minimum:
        raise SpecError(f"{name} must be an integer >= {minimum} periods, got {value!r}.")
    return int(value)


def _require_rows(past: pd.DataFrame, rows: int, who: str, t) -> None:
    if len(past) < rows:
        raise DataError(
            f"{who} needs {rows} periods of history but only {len(past)} exist before {t}. "
            "Start the backtest later or shorten the lookback."
        )


class RollingMeanForecast:
    """Mean of the last ``lookback`` periods' returns (same for every MPO step)."""

    def __init__(self, lookback: int = 504):
        self.lookback = _check_window("forecast.lookback", lookback)

    def __repr__(self) -> str:
        return f"RollingMeanForecast(lookback={self.lookback})"

    def history(self) -> int:
        return self.lookback

    def values_in_time(self, past_returns: pd.DataFrame, t=None, **kwargs) -> pd.Series:
        past = _assets(past_returns)
        _require_rows(past, self.lookback, repr(self), t)
        return past.iloc[-self.lookback :].mean()


class EwmaMeanForecast:
    """Exponentially weighted mean of past returns with the given ``halflife`` (periods)."""

    def __init__(self, halflife: float = 126.0):
        if not (np.isfinite(halflife) and halflife >= 1):
            raise SpecError(f"forecast.halflife must be >= 1 period, got {halflife=}.")
        self.halflife = float(halflife)
        # span such that pandas' alpha = 1 - exp(-ln2 / halflife) = 2 / (span + 1)
        alpha = 1.0 - np.exp(-np.log(2.0) / self.halflife)
        self._span = 2.0 / alpha - 1.0

    def __repr__(self) -> str:
        return f"EwmaMeanForecast(halflife={self.halflife:g})"

    def history(self) -> int:
        return int(np.ceil(self.halflife))

    def values_in_time(self, past_returns: pd.DataFrame, t=None, **kwargs) -> pd.Series:
        past = _assets(past_returns)
        _require_rows(past, 2, repr(self), t)
        return pd.Series(ewm_last(past, self._span, "mean"), index=past.columns)


class LinearRegressionForecast:
    """Per-(t, tau) returns forecast from a pooled linear regression on past returns.

    For planning step ``tau`` (``mpo_step``), fits by ridge least squares, pooled
    over assets, on the last ``lookback`` dates ``s`` whose target is already
    observed at ``t`` (``s + tau < t``)::

        r_{i, s+tau} = b0 + b1 * r_{i, s-1} + b2 * mean(r_{i, s-5..s-1})
                       + b3 * mean(r_{i, s-21..s-1}) + a_i + e

    where ``a_i`` is the asset's mean return over the fitting window (a
    per-asset intercept, estimated by demeaning), then predicts
    ``r_{i, t+tau}`` from the features at ``t``. This mirrors the seed
    article's use of a forecaster whose prediction depends on both the time
    and the look-ahead step.
    """

    LAGS = (1, 5, 21)

    def __init__(self, lookback: int = 504, ridge: float = 1e-6):
        self.lookback = _check_window("forecast.lookback", lookback, minimum=30)
        if not (np.isfinite(ridge) and ridge >= 0):
            raise SpecError(f"forecast.ridge must be >= 0, got {ridge=}.")
        self.ridge = float(ridge)

    def __repr__(self) -> str:
        return f"LinearRegressionForecast(lookback={self.lookback}, ridge={self.ridge:g})"

    def history(self) -> int:
        return self.lookback + max(self.LAGS)

    @classmethod
    def features(cls, returns: np.ndarray) -> np.ndarray:
        """Feature tensor ``(T, n, len(LAGS))``: row ``s`` uses returns up to ``s - 1`` only."""
        T, n = returns.shape
        csum = np.vstack([np.zeros((1, n)), np.cumsum(returns, axis=0)])  # csum[s] = sum r[:s]
        out = np.full((T + 1, n, len(cls.LAGS)), np.nan)
        for j, lag in enumerate(cls.LAGS):
            s = np.arange(lag, T + 1)
            out[s, :, j] = (csum[s] - csum[s - lag]) / lag
        return out  # out[s] for s = 0..T: features known at the start of period s

    def fit(self, past: np.ndarray, tau: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Fit step ``tau`` on past returns ``(T, n)``.

        Returns ``(coef (p,), feature_means (n, p), target_means (n,))``; features
        and targets are demeaned per asset over the fitting dates (per-asset
        intercepts), the slopes are pooled across assets.
        """
        T = past.shape[0]
        feats = self.features(past)
        # fitting dates s with target r[s + tau] observed before t: s + tau <= T - 1
        last = T - 1 - tau
        first = max(max(self.LAGS), last - self.lookback + 1)
        s = np.arange(first, last + 1)
        X, y = feats[s], past[s + tau]  # (m, n, p), (m, n)
        x_mean, y_mean = X.mean(axis=0), y.mean(axis=0)
        Xf = (X - x_mean).reshape(-1, X.shape[-1])
        yf = (y - y_mean).reshape(-1)
        gram = Xf.T @ Xf + self.ridge * len(yf) * np.eye(Xf.shape[1])
        return np.linalg.solve(gram, Xf.T @ yf), x_mean, y_mean

    def predict(self, past_returns: pd.DataFrame, tau: int) -> pd.Series:
        """Forecast of ``r_{t + tau}`` from returns strictly before ``t``."""
        past = _assets(past_returns)
        values = past.to_numpy(dtype=float)[-(self.history() + tau) :]
        coef, x_mean, y_mean = self.fit(values, tau)
        now = self.features(values)[-1]  # features at t: returns up to t - 1
        return pd.Series(y_mean + (now - x_mean) @ coef, index=past.columns)

    def values_in_time(
        self, past_returns: pd.DataFrame, t=None, mpo_step: int | None = None, cache=None, **kwargs
    ) -> pd.Series:
        tau = int(mpo_step or 0)
        _require_rows(_assets(past_returns), self.history() + tau, repr(self), t)
        return _cached(cache, ("mpo", repr(self), tau), t, lambda: self.predict(past_returns, tau))


class RollingCovariance:
    """Sample covariance of the last ``lookback`` periods' returns (a DataFrame)."""

    def __init__(self, lookback: int = 504):
        self.lookback = _check_window("risk.lookback", lookback)

    def __repr__(self) -> str:
        return f"RollingCovariance(lookback={self.lookback})"

    def history(self) -> int:
        return self.lookback

    def compute(self, past_returns: pd.DataFrame) -> pd.DataFrame:
        past = _assets(past_returns).iloc[-self.lookback :]
        x = past.to_numpy(dtype=float)
        return pd.DataFrame(
            np.cov(x, rowvar=False, ddof=1).reshape(x.shape[1], x.shape[1]),
            index=past.columns,
            columns=past.columns,
        )

    def values_in_time(
        self, past_returns: pd.DataFrame, t=None, cache=None, **kwargs
    ) -> pd.DataFrame:
        _require_rows(_assets(past_returns), self.lookback, repr(self), t)
        return _cached(cache, ("mpo", repr(self)), t, lambda: self.compute(past_returns))
