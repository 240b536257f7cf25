"""Features, windows and chronological splits for DMPO training.

Conventions (those of :class:`~mpo.data.MarketData`): ``returns.loc[t]`` is the return
from ``t`` to ``t+1``. A decision at ``t`` may use data strictly before ``t``; its
realised returns over the planning horizon are ``returns.loc[t], ..., returns.loc[t+H-1]``.

* :func:`compute_features` turns a market into a :class:`FeaturePanel` whose row ``t``
  uses only data dated ``< t`` (returns of the period ``t-1`` and earlier, EWM
  volatilities of those, rolling momentum, log volume surprise of the period ``t-1``,
  and the trailing-window risk features of :mod:`mpo.learn.features`: drawdown,
  historical VaR and CVaR, downside volatility of the returns up to ``t-1``).
* :class:`WindowDataset` holds the panel and the realised returns as tensors; the
  window of a decision at position ``t`` is ``features[t-T+1 : t+1]`` of shape
  ``(T, n, F)`` (built on demand, never stored) and its targets ``returns[t : t+H]``.
* The cost inputs ``sigma`` and ``volume`` of the period starting at ``t`` are what the
  simulator charges for it (:func:`simulator_cost_inputs`, through
  :class:`~mpo.costs.estimates.CostEstimates`): by default the period's own dollar
  volume and an EWM volatility whose window *includes the period's own return*. They
  score the realised outcome in the loss (:class:`Outcomes`), like the targets, and are
  never an input of the decision: features stay strictly past (tested).
* :func:`chronological_split` cuts decision positions into train / validation / test
  with a purge gap between them (default ``T + H - 1`` positions: no training target
  overlaps a later window or target).
"""

from __future__ import annotations

import functools
import logging
from dataclasses import asdict, dataclass, field

import numpy as np
import pandas as pd
import torch

from mpo.costs.estimates import CostEstimates
from mpo.data.market import MarketData
from mpo.errors import DataError, SpecError
from mpo.learn.cost_inputs import planner_volumes, simulator_cost_inputs
from mpo.learn.features import RISK_FEATURES, risk_feature, risk_window

__all__ = [
    "FEATURES",
    "FeaturePanel",
    "FeatureSpec",
    "Outcomes",
    "Split",
    "WindowDataset",
    "chronological_split",
    "compute_features",
    "make_dataset",
    "simulator_cost_inputs",
]

logger = logging.getLogger(__name__)

#: Feature names :func:`compute_features` knows.
FEATURES = ("returns", "volatility", "momentum", "volume", *RISK_FEATURES)


@dataclass(frozen=True)
class FeatureSpec:
    """Which features, how long a window, how long a horizon.

    Parameters
    ----------
    window : int
        ``T``, periods per window.
    horizon : int
        ``H``, planning steps (realised returns per sample).
    features : tuple of str
        Subset of :data:`FEATURES`, in order (the last axis of every window).
    vol_span : float
        EWM span of the volatility feature.
    momentum_lookback : int
        Periods of the momentum feature (mean past return times ``sqrt(lookback)``).
    volume_span : float
        EWM span of the mean log dollar volume of the volume feature.
    return_scale : float
        Returns-like features (all but ``volume``) are multiplied by this (100: percent).
    drawdown_window : int
        Periods of the ``drawdown`` feature's trailing peak.
    var_window : int
        Periods of the historical ``var`` and ``cvar`` features.
    var_level : float
        Confidence level of ``var`` and ``cvar`` in ``(0, 1)`` (0.95: the worst 5%).
    downside_window : int
        Periods of the ``downside_vol`` feature (semi-deviation below zero).

    Each window feature needs that many periods of past returns: :attr:`warmup`. The
    risk features' definitions (losses as positive numbers) are in
    :mod:`mpo.learn.features`. Checkpoints written before a field existed load with its
    default (:meth:`from_dict`).
    """

    window: int = 20
    horizon: int = 1
    features: tuple[str, ...] = ("returns",)
    vol_span: float = 21.0
    momentum_lookback: int = 21
    volume_span: float = 10.0
    return_scale: float = 100.0
    drawdown_window: int = 63
    var_window: int = 63
    var_level: float = 0.95
    downside_window: int = 21

    def __post_init__(self) -> None:
        if self.window < 1 or self.horizon < 1:
            raise SpecError(
                f"window and horizon must be >= 1, got {self.window=}, {self.horizon=}."
            )
        if not self.features:
            raise SpecError("features must name at least one feature, got an empty list.")
        unknown = [f for f in self.features if f not in FEATURES]
        if unknown or len(set(self.features)) != len(self.features):
            raise SpecError(
                f"features must be distinct names from {FEATURES}, got {list(self.features)}."
            )
        if self.vol_span < 1 or self.volume_span < 1 or self.momentum_lookback < 1:
            raise SpecError(
                f"vol_span, volume_span and momentum_lookback must be >= 1, got "
                f"{self.vol_span=}, {self.volume_span=}, {self.momentum_lookback=}."
            )
        if not self.return_scale > 0:
            raise SpecError(f"return_scale must be > 0, got {self.return_scale=}.")
        if min(self.drawdown_window, self.var_window, self.downside_window) < 1:
            raise SpecError(
                f"drawdown_window, var_window and downside_window must be >= 1, got "
                f"{self.drawdown_window=}, {self.var_window=}, {self.downside_window=}."
            )
        if not 0 < self.var_level < 1:
            raise SpecError(f"var_level must be in (0, 1), got {self.var_level=}.")

    @property
    def n_features(self) -> int:
        return len(self.features)

    @property
    def warmup(self) -> int:
        """Leading periods without a complete feature row (dropped)."""
        need = 1
        if "volatility" in self.features:
            need = max(need, 3)
        if "momentum" in self.features:
            need = max(need, self.momentum_lookback)
        if "volume" in self.features:
            need = max(need, 2)
        return max([need, *(risk_window(f, self) for f in self.features if f in RISK_FEATURES)])

    @property
    def rolling_lookback(self) -> int:
        """Longest trailing window (momentum or risk feature) of the features in use."""
        used = [risk_window(f, self) for f in self.features if f in RISK_FEATURES]
        return max([self.momentum_lookback, *used])

    def to_dict(self) -> dict:
        """Plain dict (lists for tuples), stored in checkpoints."""
        out = asdict(self)
        out["features"] = list(self.features)
        return out

    @classmethod
    def from_dict(cls, data: dict) -> FeatureSpec:
        """Inverse of :meth:`to_dict`; absent fields (older checkpoints) take their defaults."""
        data = dict(data)
        data["features"] = tuple(data.get("features", ("returns",)))
        return cls(**data)


@dataclass(frozen=True, eq=False)
class FeaturePanel:
    """Feature values ``(D, n, F)``: row ``t`` uses only data dated before ``t``.

    Constructing one checks that every value is finite; a NaN or inf raises
    :class:`DataError` naming the feature, ticker and date.
    """

    values: np.ndarray
    dates: pd.DatetimeIndex
    tickers: list[str]
    names: tuple[str, ...]

    def __post_init__(self) -> None:
        v = self.values
        if v.ndim != 3 or v.shape != (len(self.dates), len(self.tickers), len(self.names)):
            raise DataError(
                f"feature values must have shape (dates, tickers, features) = "
                f"({len(self.dates)}, {len(self.tickers)}, {len(self.names)}), got {v.shape}."
            )
        bad = ~np.isfinite(v)
        if bad.any():
            t, i, f = (int(a[0]) for a in np.nonzero(bad))
            raise DataError(
                f"feature {self.names[f]!r} is {v[t, i, f]} for ticker {self.tickers[i]!r} on "
                f"{self.dates[t].date()} ({int(bad.sum())} non-finite value(s) in all). Clean "
                "the input data or drop the feature."
            )


def _past_ewm(frame: pd.DataFrame, span: float, kind: str) -> pd.DataFrame:
    """EWM mean/std of rows ``< t`` at row ``t`` (shifted by one period)."""
    ewm = frame.ewm(span=span, adjust=True, min_periods=2 if kind == "std" else 1)
    stat = ewm.std(bias=False) if kind == "std" else ewm.mean()
    return stat.shift(1)


def _feature_frames(
    r: pd.DataFrame, dollar_volumes: pd.DataFrame | None, spec: FeatureSpec
) -> dict[str, pd.DataFrame]:
    """Feature frames on ``r``'s index; row ``t`` uses rows before ``t`` only."""
    s = spec.return_scale
    cols: dict[str, pd.DataFrame] = {}
    for name in spec.features:
        if name == "returns":
            cols[name] = r.shift(1) * s
        elif name == "volatility":
            cols[name] = _past_ewm(r, spec.vol_span, "std") * s
        elif name == "momentum":
            L = spec.momentum_lookback
            cols[name] = r.rolling(L, min_periods=L).mean().shift(1) * s * np.sqrt(L)
        elif name == "volume":
            if dollar_volumes is None:
                raise DataError("the 'volume' feature needs volumes; drop it or give volumes.")
            logv = np.log(dollar_volumes)
            cols[name] = (logv - _past_ewm(logv, spec.volume_span, "mean")).shift(1)
        elif name in RISK_FEATURES:
            lead = np.full((risk_window(name, spec), r.shape[1]), np.nan)  # shift(1) included
            values = np.vstack([lead, risk_feature(name, r.to_numpy(dtype=float)[:-1], spec)])
            cols[name] = pd.DataFrame(values * s, index=r.index, columns=r.columns)
    return cols


#: Spans of history kept by :func:`window_at` for its exponentially weighted features.
EWM_TAIL_SPANS = 40


@functools.lru_cache(maxsize=64)
def _ewm_weights(span: float, rows: int, window: int) -> np.ndarray:
    """``(window, rows)`` EWM weights (pandas ``adjust=True``) of the windows ending before
    each of the last ``window`` rows + 1: row ``k`` weighs ``x[0 .. rows - window + k]``."""
    alpha = 2.0 / (span + 1.0)
    ends = np.arange(rows - window + 1, rows + 1)  # exclusive ends
    age = ends[:, None] - 1 - np.arange(rows)[None, :]
    with np.errstate(over="ignore"):
        w = np.where(age >= 0, (1.0 - alpha) ** np.maximum(age, 0), 0.0)
    w.setflags(write=False)
    return w


def _window_features(x: np.ndarray, v: np.ndarray | None, spec: FeatureSpec) -> np.ndarray:
    """The last ``T`` rows of :func:`_feature_frames` for a decision right after ``x``'s rows.

    ``x`` (and ``v``) are the past rows only; row ``k`` of the result uses rows before
    ``len(x) - T + 1 + k``. Closed forms of pandas' operations (EWM with
    ``adjust=True``, unbiased EWM std, rolling mean): equal to the pandas panel to
    rounding (tested to 1e-12) at a fraction of the cost, which matters once per period
    in a backtest.
    """
    K, T = len(x), spec.window
    s = spec.return_scale
    cols = []
    for name in spec.features:
        if name == "returns":
            cols.append(x[K - T :] * s)
        elif name == "volatility":
            W = _ewm_weights(spec.vol_span, K, T)
            s0 = W.sum(1)[:, None]
            mean = W @ x / s0
            var = (W @ (x * x)) / s0 - mean**2
            s0sq = s0**2
            corr = s0sq / (s0sq - (W * W).sum(1)[:, None])
            cols.append(np.sqrt(np.maximum(var, 0.0) * corr) * s)
        elif name == "momentum":
            L = spec.momentum_lookback
            c = np.cumsum(np.vstack([np.zeros((1, x.shape[1])), x]), axis=0)
            ends = np.arange(K - T + 1, K + 1)
            cols.append((c[ends] - c[ends - L]) / L * s * np.sqrt(L))
        elif name == "volume":
            logv = np.log(v)
            W = _ewm_weights(spec.volume_span, K - 1, T)
            ewm = W @ logv[: K - 1] / W.sum(1)[:, None]
            cols.append(logv[K - T :] - ewm)
        elif name in RISK_FEATURES:
            L = risk_window(name, spec)  # row k's window: x[K - T + 1 + k - L : K - T + 1 + k]
            cols.append(risk_feature(name, x[K - T + 1 - L :], spec) * s)
    return np.stack(cols, -1)


def history_tail(spec: FeatureSpec) -> int:
    """Rows of past data :func:`window_at` reads (older rows cannot change its result)."""
    return (
        spec.window
        + spec.rolling_lookback
        + int(np.ceil(EWM_TAIL_SPANS * max(spec.vol_span, spec.volume_span)))
        + 2
    )


def _columns_major(a: np.ndarray | None, tail: int) -> np.ndarray | None:
    """``a[-tail:]`` laid out by columns as pandas lays out frames (a view when it is): BLAS
    rounds a matrix product by layout, and windows must not depend on how a frame was built."""
    a = None if a is None else a[-tail:]
    return a if a is None or a.strides[0] == a.itemsize else np.asfortranarray(a)


def window_at(
    t: pd.Timestamp,
    past_returns: pd.DataFrame,
    past_dollar_volumes: pd.DataFrame | None,
    spec: FeatureSpec,
) -> np.ndarray:
    """The feature window ``(T, n, F)`` of a decision at ``t`` from data before ``t`` only.

    ``past_returns`` (and volumes) are the rows strictly before ``t``, assets only,
    as cvxportfolio hands them to a policy. Equals the rows of
    :func:`compute_features`' panel ending at ``t`` (tested), so a model applied
    in a backtest sees exactly the inputs it was trained on.
    """
    r = past_returns.iloc[-history_tail(spec) :]  # older rows cannot change the window
    vols = past_dollar_volumes if "volume" in spec.features else None  # its only reader
    v = None if vols is None else vols.iloc[-len(r) :].to_numpy(dtype=float)
    return window_from_arrays(t, r.to_numpy(dtype=float), v, spec, r.index, list(r.columns))


def window_from_arrays(
    t: pd.Timestamp, x: np.ndarray, v: np.ndarray | None, spec: FeatureSpec, dates, tickers
) -> np.ndarray:
    """:func:`window_at` on arrays (what a backtest calls once per period, no pandas).

    ``x`` (and ``v``, dollar volumes, read by the ``volume`` feature only): the past rows
    ``(K, n)``, oldest first, assets in ``tickers``' order. ``dates`` (of the rows) and
    ``tickers`` only name a bad value in the error.
    """
    need = spec.warmup + spec.window
    if len(x) < need:
        raise DataError(
            f"the feature window at {pd.Timestamp(t).date()} needs {need} periods of history "
            f"({spec.warmup} warm-up + window {spec.window}), only {len(x)} exist; "
            "start the backtest later."
        )
    if "volume" in spec.features and v is None:
        raise DataError("the 'volume' feature needs volumes; drop it or give volumes.")
    # Only the recent past matters: EWM weights older than EWM_TAIL_SPANS spans are below
    # (1 - 2/(span+1))^(EWM_TAIL_SPANS span) ~ 1e-35 of the newest, so the features equal the
    # full-history panel to rounding (1e-12 tested) at a cost that does not grow with history.
    tail = history_tail(spec)
    x, dates, v = _columns_major(x, tail), dates[-tail:], _columns_major(v, tail)
    out = _window_features(x, v, spec)
    if not np.isfinite(out).all():  # FeaturePanel names the feature, ticker and date
        FeaturePanel(out, dates.append(pd.DatetimeIndex([t]))[-spec.window :], list(tickers),
                     spec.features)  # fmt: skip
    return out


def compute_features(market: MarketData, spec: FeatureSpec) -> FeaturePanel:
    """Feature panel of ``market``; row ``t`` depends on data before ``t`` only.

    The first :attr:`FeatureSpec.warmup` dates (incomplete features) are dropped.

    Parameters
    ----------
    market : MarketData
        Validated market.
    spec : FeatureSpec
        Which features.

    Returns
    -------
    FeaturePanel
    """
    start = spec.warmup
    market.require_history(start + spec.window + spec.horizon, "the feature windows")
    cols = _feature_frames(market.returns, market.dollar_volumes, spec)
    values = np.stack([cols[name].to_numpy(dtype=float)[start:] for name in spec.features], -1)
    return FeaturePanel(values, market.returns.index[start:], market.tickers, tuple(spec.features))


@dataclass(frozen=True)
class Outcomes:
    """What the planning steps of a batch of decisions realise (the loss's inputs).

    Attributes
    ----------
    returns : torch.Tensor
        ``(b, H, n)`` asset returns of the steps.
    cash : torch.Tensor
        ``(b, H)`` cash returns of the same periods.
    sigma, volume : torch.Tensor
        ``(b, H, n)`` volatility and dollar volume the simulator charges each period.
    """

    returns: torch.Tensor
    cash: torch.Tensor
    sigma: torch.Tensor
    volume: torch.Tensor


@dataclass(frozen=True)
class Split:
    """Decision positions of one chronological split (indices into the dataset)."""

    name: str
    positions: np.ndarray
    start: pd.Timestamp
    end: pd.Timestamp

    def __len__(self) -> int:
        return len(self.positions)

    def describe(self) -> dict:
        return {
            "samples": len(self),
            "start": str(self.start.date()),
            "end": str(self.end.date()),
        }


@dataclass(eq=False)
class WindowDataset:
    """Feature panel, realised returns and cost inputs as float64 tensors.

    Attributes
    ----------
    features : torch.Tensor
        ``(D, n, F)``; row ``t`` uses data before ``dates[t]``.
    returns : torch.Tensor
        ``(D, n)``: ``returns[t]`` is realised from ``dates[t]`` to the next date.
    cash : torch.Tensor
        ``(D,)`` cash return of the same periods.
    sigma, volume : torch.Tensor
        ``(D, n)`` volatility and dollar volume the simulator charges for the period
        starting at ``dates[t]`` (:func:`simulator_cost_inputs`; realised: not features).
    dates : pd.DatetimeIndex
    tickers : list of str
    spec : FeatureSpec
    fingerprint : str
        The market's fingerprint.
    adv : torch.Tensor or None
        ``(D, n)`` the planner's dollar-volume estimate at ``dates[t]`` (strictly past;
        :func:`planner_volumes`), for participation limits; ``None`` when not built.
    """

    features: torch.Tensor
    returns: torch.Tensor
    cash: torch.Tensor
    sigma: torch.Tensor
    volume: torch.Tensor
    dates: pd.DatetimeIndex
    tickers: list[str]
    spec: FeatureSpec
    fingerprint: str = ""
    adv: torch.Tensor | None = None
    _offsets: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._offsets = torch.arange(-self.spec.window + 1, 1)

    @property
    def n_assets(self) -> int:
        return len(self.tickers)

    @property
    def positions(self) -> np.ndarray:
        """Every position with a complete window and complete horizon of targets."""
        T, H = self.spec.window, self.spec.horizon
        return np.arange(T - 1, len(self.dates) - H + 1)

    def windows(self, pos: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Windows ``(b, T, n, F)`` ending at (and including) each position."""
        idx = torch.as_tensor(np.asarray(pos), dtype=torch.long)
        return self.features[idx[:, None] + self._offsets]

    def targets(self, pos: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Realised returns ``(b, H, n)`` of the planning steps of each decision."""
        idx = torch.as_tensor(np.asarray(pos), dtype=torch.long)
        return self.returns[idx[:, None] + torch.arange(self.spec.horizon)]

    def outcomes(self, pos: np.ndarray | torch.Tensor) -> Outcomes:
        """Returns, cash returns and cost inputs ``(b, H, ...)`` of each decision's steps."""
        idx = torch.as_tensor(np.asarray(pos), dtype=torch.long)
        rows = idx[:, None] + torch.arange(self.spec.horizon)
        return Outcomes(self.returns[rows], self.cash[rows], self.sigma[rows], self.volume[rows])


def make_dataset(
    market: MarketData,
    spec: FeatureSpec,
    estimates: CostEstimates | None = None,
    adv: bool = False,
) -> WindowDataset:
    """Features, realised returns and cost inputs of ``market`` on one calendar.

    ``estimates`` say what the simulator charges for ``sigma`` and ``V`` (a training
    spec's: ``spec.cost_model().estimates``; default: :class:`CostEstimates`' defaults,
    those of a policy spec without ``[costs]``). ``adv``: also the planner's volume
    estimates (:attr:`WindowDataset.adv`, for participation limits and liquidity screens).

    Raises
    ------
    DataError
        Too short a history for one window plus its horizon, or non-finite features.
    """
    panel = compute_features(market, spec)
    dates = panel.dates
    n_pos = len(dates) - spec.window - spec.horizon + 2
    if n_pos < 1:
        raise DataError(
            f"data {market.name!r} has {len(market.calendar)} periods; a window of "
            f"{spec.window} plus a horizon of {spec.horizon} after a warm-up of {spec.warmup} "
            "needs more. Use a longer history or a shorter window."
        )
    t64 = lambda x: torch.tensor(np.ascontiguousarray(x), dtype=torch.float64)  # noqa: E731
    estimates = estimates or CostEstimates()
    sigma, volume = simulator_cost_inputs(market, dates, estimates)
    planned = t64(planner_volumes(market, dates, estimates)) if adv else None
    return WindowDataset(
        features=t64(panel.values),
        returns=t64(market.returns.loc[dates].to_numpy(dtype=float)),
        cash=t64(market.cash_return.loc[dates].to_numpy(dtype=float)),
        sigma=t64(sigma),
        volume=t64(volume),
        dates=dates,
        tickers=list(market.tickers),
        spec=spec,
        fingerprint=market.fingerprint(),
        adv=planned,
    )


def chronological_split(
    dataset: WindowDataset,
    val: float = 0.15,
    test: float = 0.15,
    purge: int | None = None,
    min_samples: int = 10,
) -> tuple[Split, Split, Split]:
    """Train / validation / test decision positions in time order, separated by purges.

    Parameters
    ----------
    dataset : WindowDataset
    val, test : float
        Fractions of the usable positions for validation and test (after purging).
    purge : int or None
        Positions dropped before the validation and before the test block; ``None``
        uses ``T + H - 1`` (no window or target of a later split overlaps a target of
        an earlier one).
    min_samples : int
        Fewest positions each split must keep.

    Raises
    ------
    DataError
        When a split would have fewer than ``min_samples`` positions.
    SpecError
        Fractions outside ``(0, 1)`` or summing to ``>= 1``; negative purge.
    """
    if not (0 < val < 1 and 0 < test < 1 and val + test < 1):
        raise SpecError(f"val and test must be in (0, 1) with val + test < 1, got {val=}, {test=}.")
    T, H = dataset.spec.window, dataset.spec.horizon
    gap = T + H - 1 if purge is None else purge
    if gap < 0:
        raise SpecError(f"purge must be >= 0, got {purge=}.")
    pos = dataset.positions
    usable = len(pos) - 2 * gap
    n_val, n_test = int(round(usable * val)), int(round(usable * test))
    n_train = usable - n_val - n_test
    if min(n_train, n_val, n_test) < min_samples:
        raise DataError(
            f"{len(pos)} decision dates ({dataset.dates[0].date()} to "
            f"{dataset.dates[-1].date()}) give train/val/test = {n_train}/{n_val}/{n_test} "
            f"samples after purge gaps of {gap}; each needs >= {min_samples}. Use a longer "
            "history, a shorter window, or smaller purge."
        )
    train = pos[:n_train]
    v0 = n_train + gap
    valid = pos[v0 : v0 + n_val]
    test_pos = pos[v0 + n_val + gap : v0 + n_val + gap + n_test]

    def split(name: str, p: np.ndarray) -> Split:
        return Split(name, p, dataset.dates[p[0]], dataset.dates[p[-1]])

    return split("train", train), split("val", valid), split("test", test_pos)
