"""Shared generators of random DMPO QP instances (each test owns its RNG)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch

from mpo.learn.qp import QPSpec, min_turnover


@dataclass
class QPCase:
    """One random batch: spec plus the call arguments of ``solve_qp``."""

    spec: QPSpec
    mu: torch.Tensor
    L: torch.Tensor
    w_prev: torch.Tensor
    delta: torch.Tensor | None
    d: torch.Tensor | None = None
    gamma: torch.Tensor | None = None

    def args(self) -> tuple:
        return (self.spec, self.mu, self.L, self.w_prev, self.delta)

    def kwargs(self) -> dict:
        return {"d": self.d, "gamma": self.gamma}


def make_case(
    seed: int,
    batch: int = 6,
    n: int = 8,
    horizon: int = 1,
    factor: str = "full",
    rank: int | None = None,
    w_max: float | None = None,
    turnover: str = "loose",
    shared: bool = False,
    gamma: float = 0.002,
    dtype: torch.dtype = torch.float64,
) -> QPCase:
    """Well-conditioned random instance (``Sigma >= eps I`` with ``eps`` ~ 5% of its scale).

    ``turnover``: ``"none"`` (no limit), ``"loose"`` (rarely binds) or ``"tight"``
    (``delta`` a little above the minimal turnover, so it binds).
    """
    rng = np.random.default_rng(seed)
    k = n if factor == "full" else (rank or max(2, n // 3))
    spec = QPSpec(
        n=n,
        horizon=horizon,
        rank=None if factor == "full" else k,
        factor=factor,
        risk_aversion=1.0,
        gamma=gamma,
        eps=2e-3,
        w_max=w_max,
    )
    mu = 0.03 * rng.standard_normal((batch, horizon, n))
    lshape = (batch, n, k) if shared else (batch, horizon, n, k)
    L = 0.2 * rng.standard_normal(lshape) / np.sqrt(k)
    cap = 1.0 if w_max is None else w_max
    w_prev = rng.dirichlet(np.ones(n), size=batch)
    w_prev = np.minimum(w_prev, cap * 1.3)
    w_prev = w_prev / w_prev.sum(-1, keepdims=True)
    t = lambda x: torch.tensor(x, dtype=dtype)  # noqa: E731
    delta = None
    if turnover != "none":
        need = min_turnover(t(w_prev), w_max).numpy()
        extra = rng.uniform(0.02, 0.08, batch) if turnover == "tight" else 1.0
        delta = t(need + extra)
    d = None
    if factor == "lowrank_diag":
        shape = (batch, n) if shared else (batch, horizon, n)
        d = t(rng.uniform(0.005, 0.02, shape))
    return QPCase(spec, t(mu), t(L), t(w_prev), delta, d)


@pytest.fixture
def qp_case():
    """Factory fixture: ``qp_case(seed, **options) -> QPCase``."""
    return make_case
