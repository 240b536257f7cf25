"""Realised net returns, trading costs and the training losses every learned model shares.

Costs are those a backtest charges: the spec's :class:`mpo.costs.CostModel` (every
registered term's training formula, e.g. ``half_spread |z|`` and
``b sigma |z|^1.5 / (V / v)^0.5``) at the ``sigma`` and ``V`` the simulator charges for
the period (:class:`mpo.learn.dataset.Outcomes`). Per sample, the executed weights
``w*`` (fully invested: no cash) earn, as in cvxportfolio's accounting (costs debited
from cash, which then earns its return)::

    r_net = w*' y_t - cost(w* - w_prev) (1 + r_cash_t)

(``y_t = returns[t]``, the period after the decision; ``steps="plan"`` averages the
same over the ``H`` planned steps, each charged at its own period's ``sigma``, ``V``).
The losses are the negative annualised Sharpe ratio of a batch's net returns (the
convention of :func:`mpo.metrics.sharpe_ratio`), or the negative mean-variance utility
``-(mean - lambda/2 var)`` (seed 002). Every decision's feasibility (budget,
long-only, cap, turnover) is measured by :func:`feasibility_violation`.

A model with a regime head (:mod:`mpo.learn.heads`) may add an auxiliary term where
regime labels exist (e.g. :attr:`mpo.data.SyntheticTruth.regimes`): ``[train]
regime_loss = weight`` times the cross-entropy of the regime probabilities against the
label of each decision's first planned period (:func:`with_regime_loss`)::

    loss = -Sharpe(r_net) + weight * mean_b(-log p_b[label_b])
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mpo.costs import CostModel
from mpo.errors import SpecError
from mpo.learn.config import TrainSpec
from mpo.learn.dataset import Outcomes

__all__ = [
    "DTYPE",
    "PPY",
    "TrainingCosts",
    "feasibility_violation",
    "net_returns",
    "regime_cross_entropy",
    "regime_labels",
    "sample_w_prev",
    "sharpe_loss",
    "utility_loss",
    "with_regime_loss",
]

#: Periods per year used to annualise (daily data).
PPY = 252.0
DTYPE = torch.float64


@dataclass(frozen=True)
class TrainingCosts:
    """The cost model training charges, and the portfolio value it charges it at.

    Parameters
    ----------
    model : CostModel
        The spec's cost model (every enabled term has a training formula).
    value : float
        Portfolio value (dollars) before trading, where no value path is known.
    """

    model: CostModel
    value: float = 1e6

    @classmethod
    def from_spec(cls, spec: TrainSpec) -> TrainingCosts:
        """The costs of a training spec's ``[costs]`` (:meth:`TrainSpec.cost_model`)."""
        return cls(spec.cost_model(), spec.costs.value)

    def __call__(
        self,
        z: torch.Tensor,
        sigma: torch.Tensor,
        volume: torch.Tensor,
        value: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """Cost of trades ``z`` ``(..., n)`` as a fraction of value, shape ``z.shape[:-1]``.

        ``value`` (scalar or ``z.shape[:-1]``) defaults to :attr:`value`.
        """
        v = torch.as_tensor(self.value if value is None else value, dtype=z.dtype)
        v = v.expand(z.shape[:-1])
        cost = self.model.training_cost(z, sigma=sigma, volume=volume, value=v)
        return cost if torch.is_tensor(cost) else z.new_zeros(z.shape[:-1])


def net_returns(
    w: torch.Tensor,
    w_prev: torch.Tensor,
    out: Outcomes,
    costs: TrainingCosts,
    steps: str = "first",
    value: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Realised net returns ``(B,)`` of decisions ``w`` ``(B, H, n)`` from ``w_prev`` ``(B, n)``.

    ``out`` holds the realised returns, cash returns and cost inputs of the planning
    steps (at least ``H``); ``"first"`` scores the executed step only, ``"plan"`` the
    average over the ``H`` planned steps. ``value`` (scalar or ``(B,)``): the portfolio
    value before trading (default ``costs.value``).
    """
    if steps == "first":
        w1 = w[:, 0]
        c = costs(w1 - w_prev, out.sigma[:, 0], out.volume[:, 0], value)
        return (w1 * out.returns[:, 0]).sum(-1) - c * (1 + out.cash[:, 0])
    H = w.shape[1]
    prev = torch.cat([w_prev[:, None], w[:, :-1]], 1)
    if torch.is_tensor(value) and value.dim() == 1:
        value = value[:, None]
    c = costs(w - prev, out.sigma[:, :H], out.volume[:, :H], value)
    per_step = (w * out.returns[:, :H]).sum(-1) - c * (1 + out.cash[:, :H])
    return per_step.mean(1)


def sharpe_loss(r: torch.Tensor) -> torch.Tensor:
    """Negative annualised Sharpe ratio of a batch of net returns.

    The convention of :func:`mpo.metrics.sharpe_ratio` (tested equal to 1e-12):
    ``mean / std * sqrt(252)`` with the ``ddof=1`` standard deviation. A batch with no
    spread has no Sharpe ratio (non-finite here, NaN there); :func:`mpo.learn.fitting.fit`
    skips such a step.
    """
    return -r.mean() / r.std() * math.sqrt(PPY)


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


def regime_cross_entropy(p: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean ``-log p[label]`` of regime probabilities ``p`` ``(B, K)`` and labels ``(B,)``.

    Labels ``< 0`` (unknown) are left out; a batch without a known label gives 0.
    """
    labels = torch.as_tensor(labels, dtype=torch.long)
    known = labels >= 0
    if not bool(known.any()):
        return p.new_zeros(())
    logp = torch.log(p[known].clamp_min(1e-300))
    return torch.nn.functional.nll_loss(logp, labels[known])


def regime_labels(dates: pd.DatetimeIndex, regimes: pd.Series) -> torch.Tensor:
    """Regime label ``(D,)`` of the period starting at each of ``dates`` (-1 where unknown).

    ``regimes``: an integer regime per date (e.g. ``SyntheticTruth.regimes``). The label
    of a decision at ``dates[t]`` is the regime its first planned period is drawn in: a
    target, like the realised returns, never an input of the decision.
    """
    values = regimes.reindex(dates).to_numpy(dtype=float)
    values = np.where(np.isfinite(values), values, -1).astype(np.int64)
    return torch.as_tensor(values)


BatchLossFn = Callable[[np.ndarray, int, torch.Generator], tuple[torch.Tensor, dict]]


def with_regime_loss(
    batch_loss: BatchLossFn,
    model,
    windows: Callable,
    labels: torch.Tensor | None,
    weight: float | None,
) -> BatchLossFn:
    """``batch_loss`` plus ``weight`` times :func:`regime_cross_entropy` of the batch.

    ``weight`` ``None`` or 0 (``[train] regime_loss`` unset): ``batch_loss`` itself, so a
    trainer may wrap every batch loss with its spec's weight.

    Parameters
    ----------
    batch_loss : callable
        A :data:`mpo.learn.fitting.BatchLoss` (e.g. :func:`mpo.learn.train.dmpo_batch_loss`).
    model
        The model being trained: ``model.views(X).regime`` must be its regime probabilities.
    windows : callable
        ``positions -> X`` (``WindowDataset.windows``).
    labels : torch.Tensor or None
        ``(D,)`` labels by dataset position (:func:`regime_labels`); ``None`` with a
        weight raises :class:`~mpo.errors.SpecError` (no labels to learn from).
    weight : float or None

    The regime probabilities come from a second encoder pass over the batch's windows
    (the encoder is cheap beside the QP; with dropout its mask differs from the first
    pass). ``stats`` gain ``regime_ce`` (the unweighted cross-entropy).
    """

    if not weight:
        return batch_loss
    if labels is None:
        raise SpecError(
            f"[train] regime_loss = {weight} needs regime labels (e.g. the synthetic market's "
            "planted regimes, SyntheticTruth.regimes); none were given."
        )

    def loss(pos: np.ndarray, epoch: int, gen: torch.Generator):
        base, stats = batch_loss(pos, epoch, gen)
        p = model.views(windows(pos)).regime
        if p is None:
            raise SpecError("[train] regime_loss needs a regime head: set [encoder] regimes >= 1.")
        ce = regime_cross_entropy(p, labels[torch.as_tensor(np.asarray(pos), dtype=torch.long)])
        return base + weight * ce, {**stats, "regime_ce": float(ce.detach())}

    return loss
