"""Realised net returns, trading costs and the training losses every learned model shares.

Per sample, the executed weights ``w*`` earn the realised net return (seed paper,
Algorithm 1)::

    r_net = w*' y_{t} - kappa ||w* - w_prev||_1 [- b sum_i sigma_i |z_i|^1.5 sqrt(v / V_i)]

(``y_t = returns[t]``, the period after the decision; ``steps="plan"`` averages the
same over the ``H`` planned steps). The losses are the negative annualised Sharpe ratio
of a batch's net returns, or the negative mean-variance utility
``-(mean - lambda/2 var)`` (seed 002). Every decision's feasibility (budget, long-only,
cap, turnover) is measured by :func:`feasibility_violation`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from mpo.learn.config import TrainSpec

__all__ = [
    "DTYPE",
    "PPY",
    "CostParams",
    "feasibility_violation",
    "net_returns",
    "sample_w_prev",
    "sharpe_loss",
    "trade_cost",
    "utility_loss",
]

#: Periods per year used to annualise (daily data).
PPY = 252.0
DTYPE = torch.float64


@dataclass(frozen=True)
class CostParams:
    """Realised trading costs: ``kappa`` per unit of L1 trade, optional 1.5-power impact."""

    kappa: float = 1e-3
    impact: float = 0.0
    value: float = 1e6

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> CostParams:
        c = spec.costs
        return cls(c.kappa, c.impact, c.value)


def trade_cost(z: torch.Tensor, impact: torch.Tensor, costs: CostParams) -> torch.Tensor:
    """Cost of trades ``z`` ``(..., n)`` as a fraction of value; ``impact`` is ``sigma/sqrt(V)``."""
    cost = costs.kappa * z.abs().sum(-1)
    if costs.impact > 0:
        coef = costs.impact * math.sqrt(costs.value) * impact
        cost = cost + (coef * z.abs().pow(1.5)).sum(-1)
    return cost


def net_returns(
    w: torch.Tensor,
    w_prev: torch.Tensor,
    y: torch.Tensor,
    impact: torch.Tensor,
    costs: CostParams,
    steps: str = "first",
) -> torch.Tensor:
    """Realised net returns ``(B,)`` of decisions ``w`` ``(B, H, n)`` from ``w_prev`` ``(B, n)``.

    ``y`` ``(B, H, n)`` are the realised returns of the planning steps; ``"first"`` scores
    the executed step only, ``"plan"`` the average over the ``H`` planned steps.
    """
    if steps == "first":
        w1 = w[:, 0]
        return (w1 * y[:, 0]).sum(-1) - trade_cost(w1 - w_prev, impact, costs)
    prev = torch.cat([w_prev[:, None], w[:, :-1]], 1)
    per_step = (w * y).sum(-1) - trade_cost(w - prev, impact[:, None], costs)
    return per_step.mean(1)


def sharpe_loss(r: torch.Tensor) -> torch.Tensor:
    """Negative annualised Sharpe ratio of a batch of net returns."""
    return -r.mean() / (r.std() + 1e-12) * math.sqrt(PPY)


def utility_loss(r: torch.Tensor, risk_aversion: float) -> torch.Tensor:
    """Negative annualised mean-variance utility ``mean - lambda/2 var``."""
    return -(r.mean() - 0.5 * risk_aversion * r.var()) * PPY


def feasibility_violation(
    w: torch.Tensor, w_prev: torch.Tensor, delta: torch.Tensor | float, w_max: float | None
) -> float:
    """Largest violation of budget, long-only, cap and turnover (``w`` ``(B, H, n)`` or ``(B, n)``)."""
    w = w.detach()
    if w.dim() == 2:
        w = w[:, None]
    v = [(w.sum(-1) - 1).abs().max(), (-w).clamp(min=0).max()]
    if w_max is not None:
        v.append((w - w_max).clamp(min=0).max())
    delta = torch.as_tensor(delta, dtype=w.dtype).detach().expand(w.shape[0])
    turn = (w[:, 0] - w_prev).abs().sum(-1)
    finite = torch.isfinite(delta)
    if bool(finite.any()):
        v.append((turn[finite] - delta[finite]).clamp(min=0).max())
    return float(torch.stack(v).max())


def sample_w_prev(
    mode: str, batch: int, n: int, w_max: float | None, mix: float, generator: torch.Generator
) -> torch.Tensor:
    """Previous weights for training samples: equal weight, or EW mixed with Dirichlet(1).

    ``"random"``: ``(1 - a) / n + a D`` with ``D ~ Dirichlet(1)`` from ``generator`` and
    ``a <= mix`` the largest mixing weight that keeps every weight ``<= w_max``.
    """
    ew = torch.full((batch, n), 1.0 / n, dtype=DTYPE)
    if mode == "equal" or mix == 0:
        return ew
    g = -torch.log(torch.rand(batch, n, generator=generator, dtype=DTYPE).clamp_min(1e-300))
    D = g / g.sum(-1, keepdim=True)
    a = torch.full((batch, 1), float(mix), dtype=DTYPE)
    if w_max is not None:
        excess = (D - 1.0 / n).clamp(min=1e-300)
        room = (w_max - 1.0 / n) / excess
        a = torch.minimum(a, room.min(-1, keepdim=True).values)
    return (1 - a) * ew + a * D
