"""Volatility and volume estimates of the cost model: what the planner expects, what the market did.

The market-impact term needs, per asset and period, a volatility ``sigma`` and a
dollar volume ``V``. Two views of them exist:

* the **planner's estimates**, known when the decision is taken at ``t``: by
  default exponentially weighted (EWM) estimates over data strictly before
  ``t`` (spans ``sigma_span``, ``volume_span``), or the user's own files
  (``[costs] sigma = "..."``, ``volume = "..."``: row ``t`` is the estimate
  available at ``t``);
* what the **simulator charges** (``[costs] simulator``):

  - ``"realized"`` (default, as in Boyd et al. 2017 and cvxportfolio): the
    period's own dollar volume, and as volatility the user's ``sigma`` file
    (the user's measure of each period's volatility, as in the paper's
    experiments) or else the EWM estimate whose window ends with the period's
    own return (the planner's window ends one period earlier). With an
    assumed ADV (data without volumes) the realised volume *is* the
    assumption;
  - ``"estimates"``: the planner's estimates (the simulator charges what the
    planner expected; mpo's behaviour before 0.1).

:class:`CostEstimates` holds these choices; every term that needs ``sigma`` or
``V`` asks it, so planner, simulator and training loss read one definition.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

from mpo.errors import SpecError

__all__ = ["CostEstimates", "SIMULATOR_MODES", "ewm_last"]

#: Truncate exponential windows after this many spans (weight left < 1e-8).
_TRUNCATE_SPANS = 10

#: What the simulator charges: the period's realised sigma/volume, or the planner's estimates.
SIMULATOR_MODES = ("realized", "estimates")


def ewm_last(frame: pd.DataFrame | np.ndarray, span: float, kind: str) -> np.ndarray:
    """Last value of an exponentially weighted mean or std over ``frame``'s rows.

    Equals pandas' ``frame.ewm(span=span, adjust=True).mean()`` (or
    ``.std(bias=False)``) at the last row, computed on the last ``10 * span``
    rows only (older weights are below 1e-8), so each call costs O(span).
    NaN rows are not expected (``MarketData`` is rectangular).
    """
    x = np.asarray(frame, dtype=float)[-int(np.ceil(_TRUNCATE_SPANS * span)) :]
    alpha = 2.0 / (span + 1.0)
    weights = (1.0 - alpha) ** np.arange(len(x) - 1, -1, -1)
    total = weights.sum()
    mean = weights @ x / total
    if kind == "mean":
        return mean
    if len(x) < 2:
        return np.full(x.shape[1], np.nan)
    biased = weights @ (x - mean) ** 2 / total
    return np.sqrt(biased * total**2 / (total**2 - (weights**2).sum()))


def _series_at(source: Any, t, tickers: pd.Index) -> np.ndarray:
    """A user file estimate at ``t`` in ``tickers`` order (validated before the run)."""
    values = source.values_in_time(t=t)
    try:
        return values.reindex(tickers).to_numpy(dtype=float)
    except AttributeError:  # pragma: no cover - a plain array in universe order
        return np.asarray(values, dtype=float)


@dataclass(frozen=True)
class CostEstimates:
    """Where ``sigma`` and ``V`` come from, for the planner and for the simulator.

    Parameters
    ----------
    sigma_span, volume_span
        Spans (periods) of the EWM estimates.
    sigma, volume
        Optional user estimates for the planner (objects with
        ``values_in_time(t) -> pd.Series`` by ticker, e.g.
        :class:`mpo.forecast.files.FileEstimate`); they replace the EWM
        estimates of the planner (and of the simulator in ``"estimates"`` mode).
    simulator
        ``"realized"`` or ``"estimates"`` (see the module docstring).
    """

    sigma_span: float = 10.0
    volume_span: float = 10.0
    sigma: Any = None
    volume: Any = None
    simulator: Literal["realized", "estimates"] = "realized"

    def __post_init__(self) -> None:
        for name in ("sigma_span", "volume_span"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value >= 1):
                raise SpecError(f"costs.{name} must be >= 1 period, got {name}={value!r}.")
        if self.simulator not in SIMULATOR_MODES:
            raise SpecError(
                f"costs.simulator must be one of {', '.join(SIMULATOR_MODES)}, got "
                f"{self.simulator!r}."
            )

    @property
    def min_history(self) -> int:
        """Periods of history before the EWM estimates are meaningful."""
        return int(np.ceil(max(self.sigma_span, self.volume_span))) + 2

    # ------------------------------------------------------------------ planner
    def planner_sigma(self, t, past_returns: pd.DataFrame) -> np.ndarray:
        """Volatility per asset known at ``t`` (cash column of ``past_returns`` dropped)."""
        assets = past_returns.iloc[:, :-1]
        if self.sigma is not None:
            return _series_at(self.sigma, t, assets.columns)
        return np.nan_to_num(ewm_last(assets, self.sigma_span, "std"), nan=0.0)

    def planner_volume(self, t, past_volumes: pd.DataFrame, tickers: pd.Index) -> np.ndarray:
        """Dollar volume per asset known at ``t``."""
        if self.volume is not None:
            return _series_at(self.volume, t, tickers)
        return ewm_last(past_volumes, self.volume_span, "mean")

    # ---------------------------------------------------------------- simulator
    def simulator_sigma(self, t, past_returns, current_returns) -> np.ndarray:
        """Volatility the simulator charges for period ``t``."""
        if self.simulator == "estimates" or self.sigma is not None:
            return self.planner_sigma(t, past_returns)
        window = int(np.ceil(_TRUNCATE_SPANS * self.sigma_span))
        past = past_returns.iloc[-window:, :-1].to_numpy(dtype=float)
        now = np.asarray(current_returns, dtype=float)[None, :-1]
        return np.nan_to_num(ewm_last(np.vstack([past, now]), self.sigma_span, "std"), nan=0.0)

    def simulator_volume(self, t, past_volumes, current_volumes, tickers) -> np.ndarray:
        """Dollar volume the simulator charges for period ``t``."""
        if self.simulator == "estimates" or current_volumes is None:
            return self.planner_volume(t, past_volumes, tickers)
        if isinstance(current_volumes, pd.Series):
            return current_volumes.reindex(tickers).to_numpy(dtype=float)
        return np.asarray(current_volumes, dtype=float)[: len(tickers)]
