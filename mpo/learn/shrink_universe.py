"""The synthetic monthly factor universe of the shrinkage study (``mpo shrink``).

Returns come from the seeded factor market of :func:`mpo.data.synthetic.simulate_market`
at monthly scales, plus a cross-sectional alpha driven by an observable characteristic
(all draws from generators owned by ``seed``)::

    x_{i,t}  = rho x_{i,t-1} + sqrt(1 - rho**2) eta_{i,t}        eta ~ N(0, 1), x stationary
    r_{i,t}  = m_i + B_i . f_t + s_e_i e_{i,t} + alpha x_{i,t}   (simulate_market + alpha)

``x_t`` is known when the portfolio for period ``t`` is chosen (a characteristic observed
at the start of the month), so ``E[r_t | x_t] = m + alpha x_t``: a linear return head
``mu_hat = a + b x`` can learn it. The covariance of ``r_t`` given ``x_t`` is the factor
market's ``B diag(s_f**2) B' + diag(s_e**2)`` (``truth.covariance``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mpo.data.synthetic import SyntheticTruth, simulate_market

__all__ = ["MONTHLY_SCALES", "ShrinkUniverse", "make_universe"]

#: ``simulate_market`` keyword arguments that make its periods monthly-like.
MONTHLY_SCALES = {
    "market_vol": 0.045,
    "style_vol": 0.025,
    "idio_vol_range": (0.04, 0.10),
    "mean_drift": 0.007,
}


@dataclass(frozen=True)
class ShrinkUniverse:
    """One seeded universe: returns, the characteristic, and the truth.

    Attributes
    ----------
    returns : np.ndarray
        ``(months, n)`` simple returns; row ``t`` is the period chosen at ``t``.
    signal : np.ndarray
        ``(months, n)`` characteristic ``x_t`` known when choosing the row-``t`` portfolio.
    truth : SyntheticTruth
        The factor market's parameters (``covariance`` is the true risk).
    alpha : float
        Expected-return loading on the characteristic.
    seed : int
        The seed everything was drawn from.
    """

    returns: np.ndarray
    signal: np.ndarray
    truth: SyntheticTruth
    alpha: float
    seed: int


def make_universe(
    n_assets: int,
    months: int,
    seed: int,
    *,
    n_factors: int = 3,
    alpha: float = 0.005,
    persistence: float = 0.8,
    market_vol: float = MONTHLY_SCALES["market_vol"],
) -> ShrinkUniverse:
    """Draw one universe (see the module docstring).

    Parameters
    ----------
    n_assets, months, n_factors
        Sizes (``months`` periods of ``n_assets`` assets).
    seed
        Seed of the owned generators: the same seed gives identical data.
    alpha
        Monthly expected return per standard deviation of the characteristic.
    persistence
        AR(1) coefficient ``rho`` of the characteristic, in ``[0, 1)``.
    market_vol
        Monthly volatility of the market factor (the other scales: :data:`MONTHLY_SCALES`).

    Raises
    ------
    ValueError
        On sizes below one, a negative ``alpha`` or ``persistence`` outside ``[0, 1)``.
    """
    if not (np.isfinite(alpha) and alpha >= 0):
        raise ValueError(f"alpha must be finite and >= 0, got {alpha=}.")
    if not 0.0 <= persistence < 1.0:
        raise ValueError(f"persistence must be in [0, 1), got {persistence=}.")
    market_seed, signal_seed = np.random.SeedSequence(seed).spawn(2)
    market = simulate_market(
        n_assets=n_assets,
        n_periods=months,
        n_factors=n_factors,
        seed=int(market_seed.generate_state(1)[0]),
        start="1990-01-01",
        **(MONTHLY_SCALES | {"market_vol": market_vol}),
    )
    rng = np.random.default_rng(signal_seed)
    x = np.empty((months, n_assets))
    x[0] = rng.standard_normal(n_assets)
    shocks = np.sqrt(1 - persistence**2) * rng.standard_normal((months, n_assets))
    for t in range(1, months):
        x[t] = persistence * x[t - 1] + shocks[t]
    returns = market.data.returns.to_numpy() + alpha * x
    return ShrinkUniverse(returns, x, market.truth, float(alpha), int(seed))
