"""The risk manager's limits that stay boxes in the weights, for the learned QP layer.

The classic policies take the ``[constraints]`` participation limit and liquidity screen
as cvxportfolio constraints (:mod:`mpo.policies.limits`). In the DMPO QP they become
per-weight bounds (:attr:`mpo.learn.qp.QPInputs.lower` / ``upper``) built from the
current weights and the planner's ADV estimate (dollar volume known at the decision):

* **participation** ``p``: the executed trade ``|w_1 - w_prev| <= c = p V / v`` (``V``
  the ADV estimate, ``v`` the portfolio value), i.e. ``max(w_prev - c, 0) <= w_1 <=
  min(w_prev + c, w_max)``. When a weight above the cap cannot reach it in one trade,
  the participation limit wins (``upper_1`` is raised to ``lower_1``: sell as fast as
  allowed). Planned trades after the first are not limited (the QP plans them; only the
  first is executed), unlike cvxportfolio's MPO, which limits every planned step;
* **liquidity screen** ``min_adv``: a name whose ADV estimate is below it may only
  shrink: ``w_tau <= max(w_prev, 0)`` in every period.

Where the box leaves no fully invested portfolio (``sum upper_1 < 1``: most of the
weight sits in names that may only shrink while the others are capped) the sample is
solved without these limits and counted, with a warning (:func:`trade_box`).
Group limits (sums over a sector) are not boxes and are not in the layer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

__all__ = ["BoxLimits", "decision_box", "trade_box"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BoxLimits:
    """Participation fraction and liquidity screen (``None``: that limit is off)."""

    participation: float | None = None
    min_adv: float | None = None

    @property
    def active(self) -> bool:
        """Whether any limit is on."""
        return self.participation is not None or self.min_adv is not None


def trade_box(
    limits: BoxLimits,
    w_prev: torch.Tensor,
    adv: torch.Tensor,
    value: float,
    horizon: int,
    w_max: float | None,
) -> tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor]:
    """``(lower, upper, relaxed)`` per-weight bounds ``(B, H, n)`` of ``limits``.

    Parameters
    ----------
    limits : BoxLimits
    w_prev : torch.Tensor
        Current weights ``(B, n)``.
    adv : torch.Tensor
        The planner's dollar-volume estimate ``(B, n)`` (known at the decision).
    value : float
        Portfolio value the participation limit is taken at.
    horizon : int
        Planning steps ``H``.
    w_max : float or None
        The QP's weight cap.

    Returns
    -------
    (torch.Tensor or None, torch.Tensor or None, torch.Tensor)
        ``(None, None, relaxed)`` without limits; ``relaxed`` ``(B,)`` marks samples
        whose box left no feasible portfolio and that were given the plain box.
    """
    B, n = w_prev.shape
    relaxed = torch.zeros(B, dtype=torch.bool, device=w_prev.device)
    if not limits.active:
        return None, None, relaxed
    w_prev = w_prev.detach()
    adv = adv.detach().to(w_prev)
    cap = 1.0 if w_max is None else w_max  # 1'w = 1 and w >= 0 already give w <= 1
    lower = torch.zeros(B, horizon, n, dtype=w_prev.dtype, device=w_prev.device)
    upper = torch.full_like(lower, cap)
    if limits.participation is not None:
        c = (limits.participation * adv / value).clamp(min=0.0)
        lower[:, 0] = (w_prev - c).clamp(min=0.0)
        upper[:, 0] = torch.maximum(torch.minimum(w_prev + c, upper[:, 0]), lower[:, 0])
    if limits.min_adv is not None:
        illiquid = (adv < limits.min_adv).unsqueeze(1)
        shrink = torch.minimum(upper, w_prev.clamp(min=0.0).unsqueeze(1))
        upper = torch.where(illiquid, torch.maximum(shrink, lower), upper)
    room = (upper.sum(-1) >= 1.0 - 1e-12).all(-1) & (lower.sum(-1) <= 1.0 + 1e-12).all(-1)
    if not bool(room.all()):
        relaxed = ~room
        lower[relaxed] = 0.0
        upper[relaxed] = cap
        logger.warning(
            "participation/liquidity limits leave no fully invested portfolio for %d of %d "
            "decision(s); those are made without the limits.",
            int(relaxed.sum()),
            B,
        )
    return lower, upper, relaxed


def decision_box(limits: BoxLimits, ds, split, value: float, horizon: int, w_max: float | None):
    """``box(k, w_prev (1, n)) -> (lower, upper)`` ``(1, H, n)`` of the ``k``-th decision of
    ``split`` (the dataset's planner ADV at its position), or ``None`` without limits: what
    the sequential deciders of :mod:`mpo.learn.baselines` take."""
    if not limits.active:
        return None

    def box(k: int, w_prev: torch.Tensor):
        adv = ds.adv[split.positions[k]][None]
        lower, upper, _ = trade_box(limits, w_prev, adv, value, horizon, w_max)
        return lower, upper

    return box
