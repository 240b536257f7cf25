"""Risk models, the decision QP and the realised net Sharpe of the shrinkage study.

Every method feeds the same QP the same linear head's ``mu_hat``; only the covariance
differs. The covariance at decision month ``t`` is built from the ``T`` returns before
``t`` (``X``, ``T x n``; ``S = Xc' Xc / T`` the maximum-likelihood sample covariance of
``sklearn.covariance.empirical_covariance``, ``m = tr(S) / n``)::

    Sigma_t(delta) = (1 - delta) S_t + delta m_t I          (Ledoit-Wolf's target)

passed to the QP as ``F = sqrt(1 - delta) Xc' / sqrt(T)`` and ``d = delta m_t``
(``factor="lowrank_diag"``; exact, also when ``S`` is singular). Methods (each names
itself, :data:`METHODS` lists them in table order):

* ``plug_in``: ``delta = 0`` (the sample covariance);
* ``ledoit_wolf``: ``delta_t`` = sklearn's analytic Ledoit-Wolf intensity of the window;
* ``decision_aware``: one ``delta = sigmoid(theta)`` learned by gradient through the QP;
* ``learned_sigma``: a static ``Sigma = L L'`` (``L`` ``n x n``) learned end to end;
* ``oracle``: the universe's true covariance (known only to the simulator): how much any
  covariance estimate could gain with this head and these constraints.

The QP (:mod:`mpo.learn.qp`, fast backend), per month::

    min 1/2 w' Sigma w - lam mu_hat' w + lam c ||w - w_prev||_1
    s.t. 1'w = 1, w >= 0 (, w <= w_max), ||w - w_prev||_1 <= tau

and the realised net return is ``w' r_t - c ||w - w_prev||_1`` (``w_prev``: the previous
weights after they drifted with the previous month's returns).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from mpo.learn.qp import QPSpec, make_backend, min_turnover

__all__ = [
    "METHODS",
    "DecisionAware",
    "LearnedSigma",
    "Lane",
    "LedoitWolfRisk",
    "Oracle",
    "Panel",
    "PlugIn",
    "RiskModel",
    "Trader",
    "build_panel",
    "ledoit_wolf_intensity",
    "sample_covariance",
    "sharpe",
    "shrunk_covariance",
]

DTYPE = torch.float64
#: Periods per year (monthly).
PPY = 12.0
_FLOOR = 1e-12  # keeps d > 0 at delta = 0 (the QP's own ridge eps is added anyway)


# ------------------------------------------------------------------ estimators
def sample_covariance(window: np.ndarray) -> np.ndarray:
    """Maximum-likelihood covariance ``Xc' Xc / T`` of a ``T x n`` window (sklearn's)."""
    xc = window - window.mean(0)
    return xc.T @ xc / len(window)


def shrunk_covariance(S: np.ndarray | torch.Tensor, delta):
    """``(1 - delta) S + delta tr(S)/n I`` (numpy or torch, differentiable in ``delta``)."""
    n = S.shape[-1]
    if isinstance(S, torch.Tensor):
        eye = torch.eye(n, dtype=S.dtype)
        return (1 - delta) * S + delta * torch.diagonal(S).sum() / n * eye
    return (1 - delta) * S + delta * np.trace(S) / n * np.eye(n)


def ledoit_wolf_intensity(window: np.ndarray) -> float:
    """The analytic Ledoit-Wolf shrinkage intensity of ``sklearn.covariance.LedoitWolf``."""
    return float(LedoitWolf().fit(window).shrinkage_)


@dataclass(frozen=True)
class Panel:
    """Inputs of every decision month of one universe (row ``j`` is decision month ``j``).

    Attributes
    ----------
    F : torch.Tensor
        ``(J, n, k)`` sample-covariance factors ``Xc' / sqrt(T)`` (zero-padded to ``k``).
    m : torch.Tensor
        ``(J,)`` ``tr(S) / n``, the scale of the identity target.
    lw : torch.Tensor
        ``(J,)`` Ledoit-Wolf intensities.
    mu : torch.Tensor
        ``(J, n)`` the linear head's ``mu_hat``.
    returns : torch.Tensor
        ``(J, n)`` realised returns of the month.
    """

    F: torch.Tensor
    m: torch.Tensor
    lw: torch.Tensor
    mu: torch.Tensor
    returns: torch.Tensor

    @property
    def n(self) -> int:
        return int(self.F.shape[1])

    @property
    def k(self) -> int:
        return int(self.F.shape[2])


def build_panel(returns: np.ndarray, mu_hat: np.ndarray, lookback: int) -> Panel:
    """Panel of the decision months ``lookback .. months - 1`` (windows end before ``t``)."""
    months, n = returns.shape
    k = max(lookback, n)
    J = months - lookback
    F, m, lw = np.zeros((J, n, k)), np.empty(J), np.empty(J)
    for j in range(J):
        window = returns[j : j + lookback]
        xc = window - window.mean(0)
        F[j, :, :lookback] = xc.T / math.sqrt(lookback)
        m[j] = np.trace(sample_covariance(window)) / n
        lw[j] = ledoit_wolf_intensity(window)
    t = lambda a: torch.tensor(a, dtype=DTYPE)  # noqa: E731
    return Panel(t(F), t(m), t(lw), t(mu_hat[lookback:]), t(returns[lookback:]))


# ------------------------------------------------------------------ risk models
class RiskModel(nn.Module):
    """A covariance for each decision month: ``Sigma = L L' + diag(d)`` with ``(L, d)``."""

    #: Name in tables and files.
    name: str = ""
    #: Whether :meth:`factors` has parameters to learn end to end.
    learnable: bool = False

    def factors(self, panel: Panel, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``L`` ``(B, n, k)`` and ``d`` ``(B, n)`` for the months ``idx``."""
        raise NotImplementedError

    def describe(self) -> dict:
        """The fitted parameters worth recording (JSON-able)."""
        return {}


def _shrunk(panel: Panel, idx: torch.Tensor, delta: torch.Tensor):
    delta = delta.expand(len(idx))
    L = torch.sqrt(1 - delta)[:, None, None] * panel.F[idx]
    d = (delta * panel.m[idx] + _FLOOR)[:, None].expand(len(idx), panel.n)
    return L, d


class PlugIn(RiskModel):
    """The sample covariance (``delta = 0``)."""

    name = "plug_in"

    def factors(self, panel, idx):
        return _shrunk(panel, idx, torch.zeros((), dtype=DTYPE))


class LedoitWolfRisk(RiskModel):
    """Ledoit-Wolf: each window's analytic intensity (equals sklearn's ``LedoitWolf``)."""

    name = "ledoit_wolf"

    def factors(self, panel, idx):
        return _shrunk(panel, idx, panel.lw[idx])


class DecisionAware(RiskModel):
    """One intensity ``delta = sigmoid(theta)`` for every month, learned through the QP."""

    name = "decision_aware"
    learnable = True

    def __init__(self, delta0: float) -> None:
        super().__init__()
        d0 = min(max(float(delta0), 1e-4), 1 - 1e-4)
        self.theta = nn.Parameter(torch.tensor(math.log(d0 / (1 - d0)), dtype=DTYPE))

    @property
    def delta(self) -> torch.Tensor:
        return torch.sigmoid(self.theta)

    def factors(self, panel, idx):
        return _shrunk(panel, idx, self.delta)

    def describe(self) -> dict:
        return {"delta": float(self.delta.detach())}


class LearnedSigma(RiskModel):
    """A static ``Sigma = L L'`` with a free ``n x n`` factor ``L``, learned end to end."""

    name = "learned_sigma"
    learnable = True

    def __init__(self, sigma0: np.ndarray, k: int) -> None:
        super().__init__()
        n = sigma0.shape[0]
        self.k = k
        self.L = nn.Parameter(torch.tensor(np.linalg.cholesky(sigma0), dtype=DTYPE))
        self.register_buffer("_pad", torch.zeros(n, k - n, dtype=DTYPE))

    def factors(self, panel, idx):
        B, n = len(idx), panel.n
        L = torch.cat([self.L, self._pad], 1).expand(B, n, self.k)
        return L, torch.full((B, n), _FLOOR, dtype=DTYPE)

    def describe(self) -> dict:
        sigma = (self.L @ self.L.T).detach().numpy()
        return {"vol_mean": float(np.sqrt(np.diag(sigma)).mean())}


class Oracle(RiskModel):
    """The true covariance of the universe (a bound on what estimation can gain, not a method)."""

    name = "oracle"

    def __init__(self, sigma: np.ndarray, k: int) -> None:
        super().__init__()
        n = sigma.shape[0]
        L = torch.tensor(np.linalg.cholesky(sigma), dtype=DTYPE)
        self.register_buffer("L", torch.cat([L, torch.zeros(n, k - n, dtype=DTYPE)], 1))

    def factors(self, panel, idx):
        B, n = len(idx), panel.n
        return self.L.expand(B, n, self.L.shape[1]), torch.full((B, n), _FLOOR, dtype=DTYPE)


METHODS = ("plug_in", "ledoit_wolf", "decision_aware", "learned_sigma", "oracle")

#: A risk model and the universe it decides in (batched solves mix seeds and methods).
Lane = tuple[RiskModel, Panel]


# ------------------------------------------------------------------ decisions
def sharpe(r: torch.Tensor) -> torch.Tensor:
    """Annualised Sharpe ratio of monthly returns (``mpo.metrics.sharpe_ratio``'s convention)."""
    return r.mean(-1) / r.std(-1) * math.sqrt(PPY)


@dataclass
class Trader:
    """The decision QP and the realised net returns, shared by every method.

    Parameters
    ----------
    n, k : int
        Assets and factor columns.
    lam : float
        Weight of ``mu_hat`` against the risk term.
    cost : float
        Proportional cost per unit of L1 trade (realised, and ``lam * cost`` in the QP).
    turnover : float
        Turnover limit ``tau`` (``inf``: none).
    w_max : float or None
        Cap on every weight.
    """

    n: int
    k: int
    lam: float
    cost: float
    turnover: float
    w_max: float | None = None

    def __post_init__(self) -> None:
        self.spec = QPSpec(
            n=self.n, rank=self.k, factor="lowrank_diag", risk_aversion=self.lam,
            gamma=self.lam * self.cost, w_max=self.w_max, newton="dense",
        )  # fmt: skip
        self.backend = make_backend("fast")

    def decide(self, mu, L, d, w_prev) -> torch.Tensor:
        """Weights ``(B, n)`` of the QP."""
        tau = None
        if not math.isinf(self.turnover):  # drifted weights above a cap need some trading
            tau = torch.clamp(min_turnover(w_prev.detach(), self.w_max) + 1e-12, min=self.turnover)
        w, _ = self.backend(self.spec, mu, L, w_prev, tau, d=d)
        return w[:, 0]

    def net(self, w, w_prev, r) -> torch.Tensor:
        """Realised net returns ``(B,)``."""
        return (w * r).sum(-1) - self.cost * (w - w_prev).abs().sum(-1)

    def objective(self, lanes: list[Lane], idx: torch.Tensor, w_prev: torch.Tensor):
        """Realised net Sharpe ``(len(lanes),)`` of each lane over the months ``idx``.

        One batched solve; ``w_prev`` ``(len(lanes), len(idx), n)`` are the weights each
        month's decision starts from.
        """
        n, B = lanes[0][1].n, len(lanes) * len(idx)
        Ls, ds = zip(*(model.factors(panel, idx) for model, panel in lanes), strict=True)
        mu = torch.cat([panel.mu[idx] for _, panel in lanes])
        r = torch.cat([panel.returns[idx] for _, panel in lanes])
        wp = w_prev.reshape(B, n)
        w = self.decide(mu, torch.cat(Ls), torch.cat(ds), wp)
        return sharpe(self.net(w, wp, r).reshape(len(lanes), len(idx)))

    @torch.no_grad()
    def rollout(self, lanes: list[Lane], months: range) -> dict:
        """Sequential decisions of every lane over ``months`` from equal weight.

        Returns ``net`` ``(lanes, months)``, ``turnover`` ``(lanes, months)`` and
        ``w_prev`` ``(lanes, months, n)`` (the drifted weights each decision started from).
        """
        M, n = len(lanes), lanes[0][1].n
        w_prev = torch.full((M, n), 1.0 / n, dtype=DTYPE)
        nets, turns, prevs = [], [], []
        for j in months:
            idx = torch.tensor([j])
            Ls, ds = zip(*(model.factors(panel, idx) for model, panel in lanes), strict=True)
            mu = torch.cat([panel.mu[idx] for _, panel in lanes])
            r = torch.cat([panel.returns[idx] for _, panel in lanes])
            w = self.decide(mu, torch.cat(Ls), torch.cat(ds), w_prev)
            nets.append(self.net(w, w_prev, r))
            turns.append((w - w_prev).abs().sum(-1))
            prevs.append(w_prev)
            grown = w * (1 + r)
            w_prev = grown / grown.sum(-1, keepdim=True)
        return {
            "net": torch.stack(nets, 1),
            "turnover": torch.stack(turns, 1),
            "w_prev": torch.stack(prevs, 1),
        }
