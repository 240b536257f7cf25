"""A synthetic daily market whose true structure is known, for tests and experiments.

Model (all draws from one owned ``np.random.default_rng(seed)``; ``t`` indexes
business days, ``i`` assets, ``k`` factors)::

    f_t     = phi * f_{t-1} + sqrt(1 - phi**2) * s_f * z_t          z_t ~ N(0, I_K)
    r_{i,t} = mu_i + B_i . f_t + s_e_i * e_{i,t}                   e ~ N(0, 1)
    p_{i,t+1} = p_{i,t} * (1 + r_{i,t})
    log V_{i,t} = log adv_i + b_v * (|r_{i,t} - mu_i| / s_i - sqrt(2/pi)) + s_v * u_{i,t}

* ``r_t`` is the forward return over the period starting at ``t`` (the
  :class:`~mpo.data.MarketData` convention) and ``V_t`` the dollar volume traded
  during it, positively correlated with ``|r_t|``.
* ``phi = predictability`` in ``[0, 1)``: the factor returns are AR(1) with
  stationary standard deviation ``s_f`` whatever ``phi`` (``f`` starts from its
  stationary law), so the unconditional covariance is
  ``B diag(s_f**2) B' + diag(s_e**2)`` for every ``phi``.
* The true conditional expected return of the period starting at ``t`` is
  ``E[r_t | F_{t-1}] = mu + phi * B f_{t-1}`` where ``F_{t-1}`` holds everything
  up to the period before ``t`` (past returns and past factor returns). It uses
  only data strictly before ``t``, is exposed as ``truth.conditional_mean``, and
  with ``phi=0`` equals ``mu``. It is learnable from past returns alone because
  ``f_{t-1}`` is, up to idiosyncratic noise, the cross-sectional regression of
  ``r_{t-1} - mu`` on ``B``. The conditional covariance is
  ``B diag((1 - phi**2) s_f**2) B' + diag(s_e**2)``.
* Default scales are realistic for large-cap stocks: a market factor of 0.9%
  daily volatility with loadings around 1, two style factors of 0.5%,
  idiosyncratic volatilities of 0.8-1.6%: total volatility about 1.5% daily;
  drifts ``mu_i`` around +0.03% a day (about 7.5% a year).

Planted regimes (opt-in: ``regimes=RegimeSwitching(...)``; the default ``None`` leaves
every draw and every output of the model above bit-identical). A Markov chain
``s_t`` on ``R`` states (default 2: calm and stress), drawn from its own generator
``np.random.default_rng([seed, 16])``, switches the factors' volatility and means::

    P(s_t = a | s_{t-1} = a) = stay_a     (the rest spread evenly over the other states)
    f_t   = phi * f_{t-1} + sqrt(1 - phi**2) * s_f * v_{s_t} * z_t
    r_t   = mu + B (f_t + m_{s_t}) + s_e * e_t

``s_t`` is the regime of the period starting at ``t`` (``truth.regimes``: labels for a
regime head). Then ``E[r_t | F_{t-1}, s_{t-1}] = mu + phi B f_{t-1} + B sum_a
P(s_{t-1}, a) m_a`` (``truth.conditional_mean``); ``truth.mean`` and
``truth.covariance`` are the unconditional moments under the stationary law ``pi`` of
the chain (``mu + B E_pi m`` and ``B (diag(s_f**2 E_pi v**2) + Cov_pi m) B' +
diag(s_e**2)``), ``truth.conditional_covariance`` the conditional one averaged over
``pi``. The default stress regime doubles the factor volatilities and turns the means
of the market and of the first style factor negative: which assets a long-only
portfolio should hold depends on the regime.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import pandas as pd

from mpo.data.market import MarketData

__all__ = [
    "RegimeSwitching",
    "SyntheticMarket",
    "SyntheticTruth",
    "make_synthetic",
    "simulate_market",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SyntheticTruth:
    """The parameters a synthetic market was drawn from.

    Attributes
    ----------
    loadings
        ``B``, assets x factors.
    factor_vols
        Stationary daily volatility ``s_f`` of each factor.
    idiosyncratic_vols
        ``s_e``, per asset.
    mean
        Unconditional expected daily return ``mu``, per asset.
    covariance
        Unconditional covariance of daily returns, ``B diag(s_f**2) B' + diag(s_e**2)``.
    conditional_covariance
        Covariance of ``r_t`` given the past, ``B diag((1-phi**2) s_f**2) B' + diag(s_e**2)``.
    factor_returns
        The realised ``f_t``, dates x factors (same dates as the returns).
    conditional_mean
        ``E[r_t | past] = mu + phi B f_{t-1}``, dates x assets.
    predictability
        ``phi``.
    adv_per_asset
        ``adv_i``: geometric-mean daily dollar volume of each asset.
    regimes
        The regime ``s_t`` (0, 1, ...) of the period starting at each date, or ``None``
        (no planted regimes).
    regime_transition
        The chain's transition matrix ``P`` (regimes x regimes), or ``None``.
    regime_factor_means
        ``m``, regimes x factors, or ``None``.
    """

    loadings: pd.DataFrame
    factor_vols: pd.Series
    idiosyncratic_vols: pd.Series
    mean: pd.Series
    covariance: pd.DataFrame
    conditional_covariance: pd.DataFrame
    factor_returns: pd.DataFrame
    conditional_mean: pd.DataFrame
    predictability: float
    adv_per_asset: pd.Series
    regimes: pd.Series | None = None
    regime_transition: pd.DataFrame | None = None
    regime_factor_means: pd.DataFrame | None = None


@dataclass(frozen=True)
class RegimeSwitching:
    """A planted Markov regime of the factors' volatility and means (module docstring).

    Parameters
    ----------
    stay
        ``P(s_t = a | s_{t-1} = a)`` per regime (its length is the number of regimes);
        the default 0.98 / 0.95 gives calm spells of ~50 days and stress of ~20.
    vol_scale
        ``v_a``: multiplier of every factor's shock volatility in regime ``a``.
    factor_means
        ``m_a``: daily mean added to the factor returns in regime ``a``, one row per
        regime, leading factors first (missing entries are 0). Default: market +0.02% /
        -0.06% a day, first style factor +0.05% / -0.05%.
    """

    stay: tuple[float, ...] = (0.98, 0.95)
    vol_scale: tuple[float, ...] = (1.0, 2.0)
    factor_means: tuple[tuple[float, ...], ...] = ((2e-4, 5e-4), (-6e-4, -5e-4))

    def __post_init__(self) -> None:
        R = len(self.stay)
        if R < 2 or len(self.vol_scale) != R or len(self.factor_means) != R:
            raise ValueError(
                f"stay, vol_scale and factor_means need one entry per regime (>= 2), got "
                f"{self.stay=}, {self.vol_scale=}, {self.factor_means=}."
            )
        if not all(0.0 <= p < 1.0 for p in self.stay):
            raise ValueError(f"stay probabilities must be in [0, 1), got {self.stay=}.")
        if not all(np.isfinite(v) and v > 0 for v in self.vol_scale):
            raise ValueError(f"vol_scale must be positive, got {self.vol_scale=}.")

    @property
    def n_regimes(self) -> int:
        return len(self.stay)

    def transition(self) -> np.ndarray:
        """``P``, regimes x regimes (rows sum to 1)."""
        R = self.n_regimes
        stay = np.asarray(self.stay, dtype=float)
        P = np.repeat(((1 - stay) / (R - 1))[:, None], R, axis=1)
        np.fill_diagonal(P, stay)
        return P

    def stationary(self) -> np.ndarray:
        """The stationary law ``pi`` of :meth:`transition` (``pi P = pi``)."""
        P = self.transition()
        A = np.vstack([P.T - np.eye(self.n_regimes), np.ones(self.n_regimes)])
        b = np.zeros(self.n_regimes + 1)
        b[-1] = 1.0
        return np.linalg.lstsq(A, b, rcond=None)[0]

    def means(self, n_factors: int) -> np.ndarray:
        """``m``, regimes x ``n_factors`` (rows padded with zeros, or cut)."""
        m = np.zeros((self.n_regimes, n_factors))
        for a, row in enumerate(self.factor_means):
            k = min(len(row), n_factors)
            m[a, :k] = row[:k]
        return m

    def path(self, n_periods: int, seed: int) -> np.ndarray:
        """``s_{-1}, s_0, ..., s_{T-1}`` (``n_periods + 1`` states) from ``default_rng([seed, 16])``."""
        rng = np.random.default_rng([seed, 16])
        cum = np.cumsum(self.transition(), axis=1)
        s = np.empty(n_periods + 1, dtype=np.int64)
        s[0] = rng.choice(self.n_regimes, p=self.stationary())
        u = rng.random(n_periods)
        for t in range(n_periods):
            s[t + 1] = min(int(np.searchsorted(cum[s[t]], u[t], side="right")), self.n_regimes - 1)
        return s


@dataclass(frozen=True)
class SyntheticMarket:
    """A synthetic :class:`MarketData` and the truth it was drawn from."""

    data: MarketData
    truth: SyntheticTruth


def _check_args(n_assets: int, n_periods: int, n_factors: int, predictability: float, adv: float):
    if n_assets < 1 or n_periods < 2 or n_factors < 1:
        raise ValueError(
            f"need n_assets >= 1, n_periods >= 2 and n_factors >= 1, got {n_assets=}, "
            f"{n_periods=}, {n_factors=}."
        )
    if not 0.0 <= predictability < 1.0:
        raise ValueError(f"predictability must be in [0, 1), got {predictability=}.")
    if not (np.isfinite(adv) and adv > 0):
        raise ValueError(f"adv must be a positive dollar volume, got {adv=}.")


def simulate_market(
    n_assets: int = 20,
    n_periods: int = 1500,
    n_factors: int = 3,
    seed: int = 0,
    predictability: float = 0.0,
    start: str | pd.Timestamp = "2010-01-04",
    adv: float = 1e8,
    *,
    market_vol: float = 0.009,
    style_vol: float = 0.005,
    idio_vol_range: tuple[float, float] = (0.008, 0.016),
    mean_drift: float = 3e-4,
    volume_beta: float = 0.5,
    volume_noise: float = 0.3,
    cash_return: float = 0.0,
    regimes: RegimeSwitching | None = None,
) -> SyntheticMarket:
    """Draw a synthetic market (see the module docstring for the exact model).

    Parameters
    ----------
    n_assets, n_periods, n_factors
        Sizes; factor 0 is the market factor.
    seed
        Seed of the owned generator: the same seed gives identical data.
    predictability
        AR(1) coefficient ``phi`` of the factor returns, in ``[0, 1)``.
    start
        First business day of the calendar.
    adv
        Geometric mean, across assets, of the per-asset average daily dollar volume.
    market_vol, style_vol
        Stationary daily volatility of the market factor and of the others.
    idio_vol_range
        Idiosyncratic daily volatilities are uniform on this range.
    mean_drift
        Average of the assets' expected daily returns (drawn around it).
    volume_beta, volume_noise
        Sensitivity of log dollar volume to ``|standardized return|``, and its noise.
    cash_return
        Constant per-period return of the cash account.
    regimes
        Planted regimes of the factors (:class:`RegimeSwitching`), or ``None`` (default:
        none, the market is bit-identical to one drawn without this option).

    Returns
    -------
    SyntheticMarket
        ``data`` (``name='synthetic'``, with prices and dollar volumes) and ``truth``.
    """
    _check_args(n_assets, n_periods, n_factors, predictability, adv)
    rng = np.random.default_rng(seed)
    phi = float(predictability)
    tickers = [f"S{i:02d}" for i in range(n_assets)]
    factors = [f"F{k}" for k in range(n_factors)]
    dates = pd.bdate_range(start, periods=n_periods, name="Date")

    s_f = np.array([market_vol] + [style_vol] * (n_factors - 1))
    loadings = np.column_stack(
        [rng.normal(1.0, 0.25, n_assets)]
        + [rng.normal(0.0, 0.4, n_assets) for _ in range(n_factors - 1)]
    )
    s_e = rng.uniform(*idio_vol_range, n_assets)
    mu = rng.normal(mean_drift, mean_drift / 2, n_assets)

    # f_{-1}, f_0, ..., f_{T-1}: start from the stationary law so every period is alike
    f = np.empty((n_periods + 1, n_factors))
    f[0] = s_f * rng.standard_normal(n_factors)
    shocks = np.sqrt(1 - phi**2) * s_f * rng.standard_normal((n_periods, n_factors))
    planted = None if regimes is None else _plant(regimes, n_periods, n_factors, seed)
    if planted is not None:  # the same draws, scaled per regime
        f[0] *= planted["v"][0]
        shocks *= planted["v"][1:, None]
    for t in range(n_periods):
        f[t + 1] = phi * f[t] + shocks[t]
    cond_mean = mu + phi * f[:-1] @ loadings.T
    level = f[1:] if planted is None else f[1:] + planted["m"][planted["s"][1:]]
    returns = mu + level @ loadings.T + s_e * rng.standard_normal((n_periods, n_assets))

    cov = loadings @ np.diag(s_f**2) @ loadings.T + np.diag(s_e**2)
    cond_cov = loadings @ np.diag((1 - phi**2) * s_f**2) @ loadings.T + np.diag(s_e**2)
    if planted is not None:
        cond_mean = cond_mean + (planted["P"][planted["s"][:-1]] @ planted["m"]) @ loadings.T
        cov, cond_cov, mu_total = _regime_moments(planted, loadings, s_f, s_e, phi, mu)
    total_vol = np.sqrt(np.diag(cov))

    adv_i = adv * np.exp(rng.normal(0.0, 0.5, n_assets))
    adv_i *= adv / np.exp(np.log(adv_i).mean())  # geometric mean exactly adv
    surprise = np.abs(returns - mu) / total_vol - np.sqrt(2 / np.pi)
    log_v = np.log(adv_i) + volume_beta * surprise
    log_v += volume_noise * rng.standard_normal((n_periods, n_assets))

    p0 = 50.0 * np.exp(rng.normal(0.0, 0.5, n_assets))
    prices = p0 * np.vstack([np.ones(n_assets), np.cumprod(1 + returns[:-1], axis=0)])

    def frame(values: np.ndarray) -> pd.DataFrame:
        return pd.DataFrame(values, index=dates, columns=tickers)

    notes = f"synthetic factor model: seed={seed}, n_factors={n_factors}, predictability={phi}"
    if regimes is not None:
        notes += f", regimes={regimes}"
    data = MarketData(
        returns=frame(returns),
        cash_return=pd.Series(float(cash_return), index=dates, name="cash"),
        prices=frame(prices),
        volumes=frame(np.exp(log_v)),
        adv=adv,
        name="synthetic",
        notes=(notes,),
    )
    truth = SyntheticTruth(
        loadings=pd.DataFrame(loadings, index=tickers, columns=factors),
        factor_vols=pd.Series(s_f, index=factors),
        idiosyncratic_vols=pd.Series(s_e, index=tickers),
        mean=pd.Series(mu if planted is None else mu_total, index=tickers),
        covariance=pd.DataFrame(cov, index=tickers, columns=tickers),
        conditional_covariance=pd.DataFrame(cond_cov, index=tickers, columns=tickers),
        factor_returns=pd.DataFrame(f[1:], index=dates, columns=factors),
        conditional_mean=frame(cond_mean),
        predictability=phi,
        adv_per_asset=pd.Series(adv_i, index=tickers),
        **({} if planted is None else _regime_truth(planted, dates, factors)),
    )
    logger.debug("synthetic market: %d assets x %d periods, seed %d.", n_assets, n_periods, seed)
    return SyntheticMarket(data=data, truth=truth)


def _plant(regimes: RegimeSwitching, n_periods: int, n_factors: int, seed: int) -> dict:
    """The regime path and its per-period volatility scale and means (own generator)."""
    s = regimes.path(n_periods, seed)
    scale = np.asarray(regimes.vol_scale, dtype=float)
    return {
        "s": s,
        "v": scale[s],
        "v2": scale**2,
        "m": regimes.means(n_factors),
        "P": regimes.transition(),
        "pi": regimes.stationary(),
    }


def _regime_moments(planted: dict, B: np.ndarray, s_f, s_e, phi: float, mu: np.ndarray):
    """Unconditional covariance, pi-averaged conditional covariance and mean (docstring)."""
    m, P, pi = planted["m"], planted["P"], planted["pi"]
    v2 = float(pi @ planted["v2"])  # E_pi v**2
    em = pi @ m
    cov_m = (m - em).T @ np.diag(pi) @ (m - em)
    next_mean = P @ m  # E[m_{s_t} | s_{t-1} = a], regimes x factors
    within = sum(
        pi[a] * ((m - next_mean[a]).T @ np.diag(P[a]) @ (m - next_mean[a])) for a in range(len(pi))
    )
    idio = np.diag(s_e**2)
    cov = B @ (np.diag(s_f**2 * v2) + cov_m) @ B.T + idio
    cond_cov = B @ (np.diag((1 - phi**2) * s_f**2 * v2) + within) @ B.T + idio
    return cov, cond_cov, mu + B @ em


def _regime_truth(planted: dict, dates: pd.DatetimeIndex, factors: list[str]) -> dict:
    names = [f"R{a}" for a in range(len(planted["pi"]))]
    return {
        "regimes": pd.Series(planted["s"][1:], index=dates, name="regime"),
        "regime_transition": pd.DataFrame(planted["P"], index=names, columns=names),
        "regime_factor_means": pd.DataFrame(planted["m"], index=names, columns=factors),
    }


def make_synthetic(
    n_assets: int = 20,
    n_periods: int = 1500,
    n_factors: int = 3,
    seed: int = 0,
    predictability: float = 0.0,
    start: str | pd.Timestamp = "2010-01-04",
    adv: float = 1e8,
    **kwargs,
) -> MarketData:
    """The :class:`MarketData` of :func:`simulate_market` (same arguments), without the truth."""
    return simulate_market(
        n_assets, n_periods, n_factors, seed, predictability, start, adv, **kwargs
    ).data
