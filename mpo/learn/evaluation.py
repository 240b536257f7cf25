"""Sequential evaluation of a policy over a split (``w_prev`` carried and drifted), and
the batched validation score of a DMPO model."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from mpo.learn.dataset import Split, WindowDataset
from mpo.learn.encoders import Views
from mpo.learn.losses import DTYPE, PPY, TrainingCosts, feasibility_violation, net_returns
from mpo.learn.model import DMPOModel
from mpo.metrics import max_drawdown, sharpe_ratio

__all__ = [
    "Decide",
    "Evaluation",
    "batched_sharpe",
    "dmpo_decider",
    "herfindahl",
    "run_sequential",
]


def herfindahl(weights: np.ndarray) -> np.ndarray:
    """Herfindahl-Hirschman index ``sum_i (|w_i| / sum_j |w_j|)^2`` of each row ``(T, n)``.

    ``sum_i w_i^2`` for long-only, fully invested weights: ``1/n`` at equal weight, 1 in
    a single name; NaN for a row without positions.
    """
    a = np.abs(np.asarray(weights, dtype=float))
    gross = a.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(gross > 0, (a**2).sum(axis=1) / gross**2, np.nan)


@dataclass
class Evaluation:
    """A sequential run of a policy over one split (``w_prev`` carried and drifted).

    Attributes
    ----------
    name : str
    dates : pd.DatetimeIndex
    net, gross, cost, turnover, excess : np.ndarray
        Per period; ``cost`` is the cost as a fraction of value before trading
        (``net = gross - cost (1 + r_cash)``), ``turnover`` is ``||w - w_prev||_1``.
    weights : np.ndarray
        ``(T, n)`` executed weights.
    max_violation : float
        Largest feasibility violation over every decision.
    starved_share : float
        Share of decisions with zero ``d w / d mu`` (NaN if not applicable).
    """

    name: str
    dates: pd.DatetimeIndex
    net: np.ndarray
    gross: np.ndarray
    cost: np.ndarray
    turnover: np.ndarray
    excess: np.ndarray
    weights: np.ndarray
    max_violation: float
    starved_share: float = float("nan")

    def metrics(self) -> dict:
        """The split's statistics (JSON-able floats), keyed by name.

        ``sharpe`` (annualised, of excess net returns), ``annual_return`` and
        ``annual_volatility`` (of net returns); ``max_drawdown``: the largest
        peak-to-trough loss of the compounded net value, a positive fraction
        (:func:`mpo.metrics.max_drawdown`); turnover as cvxportfolio counts it,
        ``||w - w_prev||_1 / 2`` per period: ``annual_turnover`` (mean times periods
        per year) and ``total_turnover`` (sum over the split); cost as a fraction of
        value: ``annual_cost`` (mean times periods per year) and ``total_cost`` (sum);
        concentration of the executed weights: ``mean_hhi`` (mean of :func:`herfindahl`
        over decisions) and ``effective_names`` (``1 / mean_hhi``: ``n`` at equal weight,
        1 in a single name).
        """
        hhi = herfindahl(self.weights)
        mean_hhi = float(np.nanmean(hhi)) if np.isfinite(hhi).any() else float("nan")
        return {
            "sharpe": sharpe_ratio(self.excess, PPY),
            "annual_return": float(self.net.mean() * PPY),
            "annual_volatility": float(self.net.std(ddof=1) * math.sqrt(PPY)),
            "max_drawdown": max_drawdown(pd.Series(self.net)),
            "annual_turnover": float(self.turnover.mean() / 2 * PPY),
            "total_turnover": float(self.turnover.sum() / 2),
            "annual_cost": float(self.cost.mean() * PPY),
            "total_cost": float(self.cost.sum()),
            "mean_hhi": mean_hhi,
            "effective_names": 1.0 / mean_hhi if mean_hhi > 0 else float("nan"),
            "max_violation": self.max_violation,
            "starved_share": self.starved_share,
            "periods": len(self.net),
        }


Decide = Callable[[int, torch.Tensor], tuple[torch.Tensor, torch.Tensor, bool]]


def run_sequential(
    name: str,
    decide: Decide,
    ds: WindowDataset,
    split: Split,
    costs: TrainingCosts,
    w_max: float | None,
    w0: torch.Tensor | None = None,
) -> Evaluation:
    """Run ``decide(k, w_prev) -> (w (n,), delta_used, starved)`` day by day over ``split``.

    Starts from equal weight (or ``w0``); after each period the weights drift with the
    realised returns (``w (1 + y) / (1 + w'y)``: fully invested, costs taken pro rata).
    Costs are the training costs (:func:`~mpo.learn.losses.net_returns`) on
    ``w - w_prev`` at the portfolio value ``costs.value``; feasibility of every decision
    is measured against the limit the decision was made under.
    """
    n = ds.n_assets
    w_prev = torch.full((n,), 1.0 / n, dtype=DTYPE) if w0 is None else w0.to(DTYPE)
    T = len(split)
    net, gross, cost, turn = (np.empty(T) for _ in range(4))
    W = np.empty((T, n))
    viol, starved = 0.0, 0
    with torch.no_grad():
        for k, pos in enumerate(split.positions):
            w, delta, st = decide(k, w_prev)
            viol = max(viol, feasibility_violation(w[None], w_prev[None], delta, w_max))
            starved += int(st)
            y = ds.returns[pos]
            z = w - w_prev
            c = float(costs(z[None], ds.sigma[pos][None], ds.volume[pos][None])[0])
            g = float(w @ y)
            net[k] = g - c * (1 + float(ds.cash[pos]))
            gross[k], cost[k], turn[k], W[k] = g, c, float(z.abs().sum()), w
            w_prev = w * (1 + y) / (1 + g)
    excess = net - ds.cash[split.positions].numpy()
    dates = ds.dates[split.positions]
    return Evaluation(name, dates, net, gross, cost, turn, excess, W, viol, starved / T)


def dmpo_decider(
    model: DMPOModel,
    ds: WindowDataset,
    split: Split,
    chunk: int = 256,
    value: float | None = None,
) -> Decide:
    """Sequential decisions of a DMPO model over ``split`` (views computed in batches),
    under its participation/liquidity limits if it has them (at portfolio ``value``)."""
    model.eval()
    with torch.no_grad():
        parts = [
            model.views(ds.windows(split.positions[i : i + chunk]))
            for i in range(0, len(split), chunk)
        ]
    views = Views(
        torch.cat([v.mu for v in parts]),
        torch.cat([v.L for v in parts]),
        None if parts[0].d is None else torch.cat([v.d for v in parts]),
    )

    def decide(k: int, w_prev: torch.Tensor):
        adv = None if ds.adv is None else ds.adv[split.positions[k]][None]
        w, info, delta = model.decide(views.index(slice(k, k + 1)), w_prev[None], adv, value)
        return w[0, 0], delta, bool(info.starved[0])

    return decide


def batched_sharpe(
    model: DMPOModel, ds: WindowDataset, split: Split, costs: TrainingCosts
) -> float:
    """Validation score: annualised Sharpe (:func:`mpo.metrics.sharpe_ratio`, NaN for flat
    returns) of one-step excess net returns from equal weight, every decision under the
    inference (hard) limit; one batched solve."""
    model.eval()
    with torch.no_grad():
        pos = split.positions
        n = ds.n_assets
        w_prev = torch.full((len(pos), n), 1.0 / n, dtype=DTYPE)
        adv = None if ds.adv is None else ds.adv[torch.as_tensor(pos)]
        w, _, _ = model.decide(model.views(ds.windows(pos)), w_prev, adv, costs.value)
        r = net_returns(w, w_prev, ds.outcomes(pos), costs)
        ex = (r - ds.cash[pos]).numpy()
    return sharpe_ratio(ex, PPY)
