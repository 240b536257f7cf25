"""Trailing-window risk features of asset returns: drawdown, historical VaR and CVaR,
downside volatility.

Each is a statistic of the last ``L`` returns of one asset, computed on the window
itself (no running sums carried across windows), so the training panel
(:func:`mpo.learn.dataset.compute_features`, every window of the history) and a
backtest's window (:func:`mpo.learn.dataset.window_at`, the recent past only) apply
the same arithmetic to the same numbers. Every value is a *loss as a positive number*
(a fraction of value; the panel scales it by ``return_scale`` like the returns):

``drawdown``
    ``1 - V_L / max(V_0, ..., V_L)`` with ``V_0 = 1`` and ``V_k = prod_{j<=k} (1 + r_j)``
    the value compounded over the window: how far the asset stands below its peak of the
    last ``drawdown_window`` periods (0 at a new high; in ``[0, 1]``).
``var``
    Historical value at risk at level ``a`` (``var_level``, e.g. 0.95):
    ``-r_(k)``, the ``k``-th smallest of the ``var_window`` returns with
    ``k = ceil((1 - a) L)`` (numpy's ``quantile(..., 1 - a, method="inverted_cdf")``,
    negated). Positive when that return is a loss, negative when even it is a gain.
``cvar``
    Historical conditional value at risk (expected shortfall) at the same level and
    window: ``-(r_(1) + ... + r_(k)) / k``, the mean of the ``k`` worst returns, negated;
    ``cvar >= var`` always.
``downside_vol``
    Downside deviation (semi-deviation below zero) over ``downside_window`` periods:
    ``sqrt(sum_j min(r_j, 0)^2 / L)``, the denominator of the Sortino ratio
    (:func:`mpo.metrics.sortino_ratio`), per period (not annualised).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

__all__ = [
    "RISK_FEATURES",
    "cvar_rank",
    "risk_feature",
    "risk_window",
    "trailing",
]

#: Risk feature names (a subset of :data:`mpo.learn.dataset.FEATURES`).
RISK_FEATURES = ("drawdown", "var", "cvar", "downside_vol")

#: Most window values one block of :func:`trailing` holds at once (bounds memory).
_BLOCK_VALUES = 1 << 22


def cvar_rank(level: float, window: int) -> int:
    """``k = ceil((1 - level) window)`` (at least 1): the returns VaR and CVaR look at.

    Rounded to 9 decimals first, so that ``(1 - 0.95) * 60`` (``3.0000000000000027`` in
    floating point) gives 3, as the decimal arithmetic says.
    """
    return max(1, math.ceil(round((1.0 - level) * window, 9)))


def _drawdown(win: np.ndarray) -> np.ndarray:
    value = np.cumprod(1.0 + win, axis=-1)
    peak = np.maximum(value.max(axis=-1), 1.0)
    return 1.0 - value[..., -1] / peak


def _tail(win: np.ndarray, k: int) -> np.ndarray:
    return np.partition(win, k - 1, axis=-1)[..., :k]


def _downside(win: np.ndarray) -> np.ndarray:
    return np.sqrt(np.mean(np.minimum(win, 0.0) ** 2, axis=-1))


def risk_window(name: str, spec) -> int:
    """The window ``L`` of risk feature ``name`` under ``spec`` (a ``FeatureSpec``)."""
    return {
        "drawdown": spec.drawdown_window,
        "var": spec.var_window,
        "cvar": spec.var_window,
        "downside_vol": spec.downside_window,
    }[name]


def _statistic(name: str, spec) -> Callable[[np.ndarray], np.ndarray]:
    """``(..., L) -> (...)``: the statistic of each window along the last axis."""
    if name == "drawdown":
        return _drawdown
    if name == "downside_vol":
        return _downside
    k = cvar_rank(spec.var_level, spec.var_window)
    if name == "var":
        return lambda win: -_tail(win, k).max(axis=-1)
    return lambda win: -_tail(win, k).mean(axis=-1)


def trailing(x: np.ndarray, window: int, stat: Callable[[np.ndarray], np.ndarray]) -> np.ndarray:
    """``stat`` of every window of ``window`` consecutive rows of ``x`` ``(rows, n)``.

    Row ``i`` of the result ``(rows - window + 1, n)`` is ``stat`` of ``x[i : i + window]``
    (per column). Computed in blocks of rows, so memory stays bounded on long histories.
    """
    x = np.asarray(x, dtype=float)
    rows, n = x.shape
    m = rows - window + 1
    if m < 1:
        return np.empty((0, n))
    views = sliding_window_view(x, window, axis=0)  # (m, n, window), no copy
    step = max(1, _BLOCK_VALUES // max(1, n * window))
    return np.concatenate([stat(views[i : i + step]) for i in range(0, m, step)], axis=0)


def risk_feature(name: str, x: np.ndarray, spec) -> np.ndarray:
    """Risk feature ``name`` (unscaled) of the windows of ``x`` ``(rows, n)`` returns.

    Row ``i`` of the result ``(rows - L + 1, n)`` uses ``x[i : i + L]`` only, ``L`` =
    :func:`risk_window`. A feature row dated ``t`` is the row whose window ends at the
    return of the period ``t - 1`` (the caller shifts): strictly past.
    """
    if name not in RISK_FEATURES:
        raise KeyError(f"{name!r} is not a risk feature; known: {RISK_FEATURES}.")
    return trailing(x, risk_window(name, spec), _statistic(name, spec))
