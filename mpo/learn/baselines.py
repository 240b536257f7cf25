"""Baselines trained on the same windows as DMPO.

* **Two-stage** (predict, then optimise): the same encoder trained on the MSE of next
  returns; its ``mu_hat`` and a Ledoit-Wolf covariance (``sklearn.covariance.LedoitWolf``
  on the ``lw_lookback`` returns before ``t``) go into the same QP with the same limits.
* **Direct weights** (seed 001, the myopic approach): the encoder's first-step output
  is read as logits, ``softmax`` gives target weights, and the turnover limit is
  enforced by the exact Euclidean projection :func:`project_turnover` onto
  ``{1'w = 1, 0 <= w <= w_max, ||w - w_prev||_1 <= delta}``; trained on the same
  net-return Sharpe loss.
* **Equal weight**: the projection of ``1/n`` (trades towards equal weight as far as
  the turnover limit allows).

Projection algorithm: with multipliers ``nu`` (budget) and ``beta >= 0`` (turnover), the
KKT conditions give ``w_i = clip(p_i + soft(v_i + nu - p_i, beta), 0, u)``. For fixed
``beta`` the budget sum is continuous, nondecreasing and piecewise linear in ``nu`` with
known breakpoints, so ``nu`` is found exactly (sort, locate, interpolate); the turnover is
nonincreasing in ``beta``, which is bisected (60 halvings) keeping the feasible end.
Its derivative is the orthogonal projection onto the complement of ``span(1_F, s_F)``
on the free coordinates ``F`` (``s`` the trade signs; only ``1_F`` when the limit does
not bind).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
from sklearn.covariance import LedoitWolf
from torch import nn

from mpo.learn.config import TrainSpec
from mpo.learn.dataset import Split, WindowDataset
from mpo.learn.encoders import EncoderConfig, Views, build_encoder
from mpo.learn.evaluation import Decide
from mpo.learn.fitting import Trained, fit
from mpo.learn.losses import (
    DTYPE,
    PPY,
    TrainingCosts,
    feasibility_violation,
    net_returns,
    sample_w_prev,
    sharpe_loss,
    utility_loss,
)
from mpo.learn.model import hold_unconverged, seeded
from mpo.learn.options import QPOptions
from mpo.learn.qp import QPInfo, QPSpec, make_backend, min_turnover, solve_qp
from mpo.metrics import sharpe_ratio

__all__ = [
    "DirectModel",
    "TwoStageModel",
    "equal_weight_decider",
    "ledoit_wolf_factors",
    "project_turnover",
    "train_direct",
    "train_two_stage",
]

logger = logging.getLogger(__name__)

_BISECT = 60


# ------------------------------------------------------------------- projection
def _coordinate(v, p, nu, beta, u):
    """``clip(p + soft(v + nu - p, beta), 0, u)`` with broadcasting."""
    x = v + nu - p
    return (p + torch.sign(x) * (x.abs() - beta).clamp(min=0)).clamp(0.0, u)


def _solve_nu(v: torch.Tensor, p: torch.Tensor, beta: torch.Tensor, u: float) -> torch.Tensor:
    """Exact ``nu`` with ``sum_i w_i(nu, beta) = 1`` (``v``, ``p`` ``(B, n)``, ``beta`` ``(B,)``)."""
    b = beta[:, None]
    bps = torch.cat([p - v + b, p - v - b, b - v, -b - v, u - v + b, u - v - b], -1)
    bps, _ = torch.sort(bps, -1)  # (B, m)
    S = _coordinate(v[:, None], p[:, None], bps[..., None], b[..., None], u).sum(-1)  # (B, m)
    j = (S <= 1.0).sum(-1).clamp(1, bps.shape[1] - 1) - 1
    lo, hi = bps.gather(1, j[:, None])[:, 0], bps.gather(1, j[:, None] + 1)[:, 0]
    slo, shi = S.gather(1, j[:, None])[:, 0], S.gather(1, j[:, None] + 1)[:, 0]
    slope = shi - slo
    frac = torch.where(slope > 0, (1.0 - slo) / slope.clamp(min=1e-300), torch.zeros_like(slo))
    return lo + frac.clamp(0, 1) * (hi - lo)


def _project(v: torch.Tensor, p: torch.Tensor, delta: torch.Tensor, u: float):
    """Projection and its multipliers (no autograd)."""
    B = v.shape[0]
    zero = torch.zeros(B, dtype=v.dtype)
    nu = _solve_nu(v, p, zero, u)
    w = _coordinate(v, p, nu[:, None], 0.0, u)
    active = (w - p).abs().sum(-1) > delta
    beta = zero.clone()
    if bool(active.any()):
        va, pa, da = v[active], p[active], delta[active]
        lo = torch.zeros(va.shape[0], dtype=v.dtype)
        hi = torch.ones_like(lo)
        for _ in range(200):  # grow hi until feasible
            nu_hi = _solve_nu(va, pa, hi, u)
            turn = (_coordinate(va, pa, nu_hi[:, None], hi[:, None], u) - pa).abs().sum(-1)
            bad = turn > da
            if not bool(bad.any()):
                break
            hi = torch.where(bad, 2 * hi, hi)
        for _ in range(_BISECT):
            mid = 0.5 * (lo + hi)
            nu_m = _solve_nu(va, pa, mid, u)
            turn = (_coordinate(va, pa, nu_m[:, None], mid[:, None], u) - pa).abs().sum(-1)
            ok = turn <= da
            hi, lo = torch.where(ok, mid, hi), torch.where(ok, lo, mid)
        nu_a = _solve_nu(va, pa, hi, u)
        w[active] = _coordinate(va, pa, nu_a[:, None], hi[:, None], u)
        beta[active] = hi
    return w, beta


class _Projection(torch.autograd.Function):
    @staticmethod
    def forward(ctx, v, p, delta, u):
        w, beta = _project(v.detach(), p.detach(), delta.detach(), u)
        ctx.save_for_backward(w, p, beta)
        ctx.u = u
        return w

    @staticmethod
    def backward(ctx, g):
        w, p, beta = ctx.saved_tensors
        tol = 1e-12
        free = (w > tol) & (w < ctx.u - tol) & ((w - p).abs() > tol)
        ones = free.to(g.dtype)
        sign = torch.sign(w - p) * ones * (beta > 0).to(g.dtype)[:, None]
        A = torch.stack([ones, sign], -1)  # (B, n, 2)
        gf = g * ones
        coef = torch.linalg.pinv(A.mT @ A) @ (A.mT @ gf[..., None])
        return (gf - (A @ coef)[..., 0]) * ones, None, None, None


def project_turnover(
    v: torch.Tensor, w_prev: torch.Tensor, delta: float | torch.Tensor, w_max: float | None
) -> torch.Tensor:
    """Euclidean projection of ``v`` ``(B, n)`` onto ``{1'w=1, 0<=w<=w_max, ||w-w_prev||_1<=delta}``.

    Differentiable in ``v`` (see the module docstring). ``delta`` must be at least
    :func:`mpo.learn.qp.min_turnover` of ``w_prev`` (``inf``: no turnover limit).
    """
    u = 1.0 if w_max is None else float(w_max)
    delta = torch.as_tensor(delta, dtype=v.dtype).expand(v.shape[0]).contiguous()
    need = min_turnover(w_prev.detach(), w_max)
    if bool((delta < need - 1e-12).any()):
        raise ValueError("delta is below the minimal turnover from w_prev; raise it.")
    return _Projection.apply(v, w_prev, delta, u)


# -------------------------------------------------------------------- two-stage
def ledoit_wolf_factors(ds: WindowDataset, positions: np.ndarray, lookback: int) -> torch.Tensor:
    """Cholesky factors ``(len, n, n)`` of Ledoit-Wolf covariances of the returns before each
    position (the ``lookback`` rows ``pos - lookback .. pos - 1``; fewer at the start)."""
    R = ds.returns.numpy()
    out = np.empty((len(positions), ds.n_assets, ds.n_assets))
    for k, pos in enumerate(positions):
        window = R[max(0, pos - lookback) : pos]
        if len(window) < 10:
            raise ValueError(f"position {pos} has {len(window)} past returns; need >= 10.")
        cov = LedoitWolf().fit(window).covariance_
        out[k] = np.linalg.cholesky(cov + 1e-12 * np.eye(ds.n_assets))
    return torch.tensor(out, dtype=DTYPE)


class TwoStageModel(nn.Module):
    """Encoder trained on MSE; decisions from its ``mu_hat`` and a Ledoit-Wolf risk model."""

    def __init__(
        self, encoder_config: EncoderConfig, qp_options: QPOptions | Mapping[str, Any]
    ) -> None:
        super().__init__()
        self.encoder_config = encoder_config
        self.qp_options = opts = QPOptions.coerce(qp_options)
        self.encoder = build_encoder(encoder_config).to(DTYPE)
        n = encoder_config.n_assets
        self.qp_spec = QPSpec(
            n=n,
            horizon=encoder_config.horizon,
            risk_aversion=opts.risk_aversion,
            gamma=opts.gamma,
            eps=opts.eps,
            w_max=opts.w_max,
            factor="full",
            max_iter=150,  # as DMPOModel's; unconverged samples hold w_prev (solve)
            on_failure="nan",
        )
        self.delta = opts.delta
        self.qp_backend = make_backend(opts.backend)

    def mu(self, X: torch.Tensor) -> torch.Tensor:
        return self.encoder(X.to(DTYPE)).mu.to(DTYPE)

    def solve(
        self,
        views: Views,
        w_prev: torch.Tensor,
        delta: torch.Tensor | float,
        lower: torch.Tensor | None = None,
        upper: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, QPInfo]:
        """Weights ``(B, H, n)`` of the QP for ``views`` (``mu_hat``, Ledoit-Wolf factor),
        in the box ``lower``/``upper`` where given (:func:`mpo.learn.limits.trade_box`).
        Samples the solver does not certify hold ``w_prev``, as DMPO's do
        (:func:`mpo.learn.model.hold_unconverged`)."""
        w, info = self.qp_backend(self.qp_spec, views.mu, views.L, w_prev, delta, d=views.d,
                                  lower=lower, upper=upper)  # fmt: skip
        return hold_unconverged(w, info, w_prev), info


def train_two_stage(
    spec: TrainSpec,
    ds: WindowDataset,
    train: Split,
    val: Split,
    *,
    progress: bool = True,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> Trained:
    """Fit the encoder's ``mu_hat`` on the MSE of realised returns (early stop on val MSE).

    ``resume`` and ``checkpoint`` are :func:`~mpo.learn.fitting.fit`'s.
    """
    enc = spec.encoder_config(ds.n_assets)
    qp = dataclasses.replace(spec.qp_options(), learned_delta=False)
    model = seeded(spec.train.seed, lambda: TwoStageModel(enc, qp))
    scale = ds.spec.return_scale

    def mse(pos) -> torch.Tensor:
        return ((model.mu(ds.windows(pos)) - ds.targets(pos)) * scale).pow(2).mean()

    def batch_loss(pos, epoch, gen):
        return mse(pos), {"n": len(pos)}

    def validate() -> float:
        with torch.no_grad():
            return -float(mse(val.positions))

    result = fit(
        model, batch_loss, validate, train.positions, spec.train,
        epochs=spec.baselines.two_stage_epochs, desc="two-stage", progress=progress,
        resume=resume, checkpoint=checkpoint,
    )  # fmt: skip
    return Trained(model, result, "two_stage")


def two_stage_decider(
    model: TwoStageModel, ds: WindowDataset, split: Split, lookback: int, box=None
) -> Decide:
    """Sequential decisions: encoder ``mu_hat`` + Ledoit-Wolf factor into the hard-limit QP
    (in the participation/liquidity ``box``, :func:`mpo.learn.limits.decision_box`)."""
    model.eval()
    with torch.no_grad():
        mu = model.mu(ds.windows(split.positions))
    L = ledoit_wolf_factors(ds, split.positions, lookback)
    spec = model.qp_spec

    def decide(k: int, w_prev: torch.Tensor):
        lower, upper = (None, None) if box is None else box(k, w_prev[None])
        need = min_turnover(w_prev[None], spec.w_max, lower, upper) + 1e-12
        delta = torch.clamp(need, min=model.delta)
        views = Views(mu[k : k + 1], L[k : k + 1])
        w, info = model.solve(views, w_prev[None], delta, lower, upper)
        return w[0, 0], delta, bool(info.starved[0])

    return decide


# ----------------------------------------------------------------- direct weights
class DirectModel(nn.Module):
    """Softmax weights from the encoder's first-step output, projected onto the turnover set."""

    def __init__(self, encoder_config: EncoderConfig, w_max: float | None, delta: float) -> None:
        super().__init__()
        self.encoder_config = encoder_config
        self.encoder = build_encoder(encoder_config).to(DTYPE)
        self.w_max = w_max
        self.delta = float(delta)

    def target(self, X: torch.Tensor) -> torch.Tensor:
        """Unconstrained softmax weights ``(B, n)``."""
        logits = self.encoder(X.to(DTYPE)).mu[:, 0].to(DTYPE) / self.encoder_config.mu_scale
        return torch.softmax(logits, -1)

    def forward(self, X: torch.Tensor, w_prev: torch.Tensor, delta) -> torch.Tensor:
        return project_turnover(self.target(X), w_prev, delta, self.w_max)


def train_direct(
    spec: TrainSpec,
    ds: WindowDataset,
    train: Split,
    val: Split,
    *,
    progress: bool = True,
    resume: dict | None = None,
    checkpoint: Callable[[dict], None] | None = None,
) -> Trained:
    """Fit the direct-weights network on the same net-return loss as DMPO (hard limit).

    ``resume`` and ``checkpoint`` are :func:`~mpo.learn.fitting.fit`'s.
    """
    enc = spec.encoder_config(ds.n_assets)
    model = seeded(spec.train.seed, lambda: DirectModel(enc, spec.qp.w_max, spec.qp.delta))
    costs = TrainingCosts.from_spec(spec)
    t = spec.train

    def batch_loss(pos, epoch, gen) -> tuple:
        n, B = ds.n_assets, len(pos)
        w_prev = sample_w_prev(t.w_prev, B, n, spec.qp.w_max, t.w_prev_mix, gen)
        w = model(ds.windows(pos), w_prev, spec.qp.delta)[:, None]
        r = net_returns(w, w_prev, ds.outcomes(pos), costs)
        loss = sharpe_loss(r) if t.loss == "sharpe" else utility_loss(r, t.utility_risk_aversion)
        viol = feasibility_violation(w, w_prev, spec.qp.delta, spec.qp.w_max)
        return loss, {"n": B, "violation": viol}

    def validate() -> float:
        with torch.no_grad():
            pos = val.positions
            w_prev = torch.full((len(pos), ds.n_assets), 1.0 / ds.n_assets, dtype=DTYPE)
            w = model(ds.windows(pos), w_prev, spec.qp.delta)[:, None]
            r = net_returns(w, w_prev, ds.outcomes(pos), costs)
            ex = (r - ds.cash[pos]).numpy()
        return sharpe_ratio(ex, PPY)

    result = fit(
        model, batch_loss, validate, train.positions, spec.train,
        epochs=spec.baselines.direct_epochs, desc="direct", progress=progress,
        resume=resume, checkpoint=checkpoint,
    )  # fmt: skip
    return Trained(model, result, "direct")


def direct_decider(model: DirectModel, ds: WindowDataset, split: Split, box=None) -> Decide:
    """Sequential decisions of the direct-weights network (in the ``box``, see
    :func:`equal_weight_decider`)."""
    model.eval()
    with torch.no_grad():
        target = model.target(ds.windows(split.positions))
    return _projecting_decider(lambda k: target[k : k + 1], model.w_max, model.delta, box)


def equal_weight_decider(n: int, w_max: float | None, delta: float, box=None) -> Decide:
    """Trade towards ``1/n`` as far as the turnover limit allows (exact projection).

    ``box``: ``(k, w_prev (1, n)) -> (lower, upper)`` per-weight bounds ``(1, H, n)`` of
    the decision (participation / liquidity limits, :func:`mpo.learn.limits.decision_box`;
    the first period is used);
    the projection onto the box, the budget and the turnover limit is then the QP
    ``min 1/2 ||w||^2 - v'w`` (``Sigma = I``), solved exactly by the QP layer.
    """
    ew = torch.full((1, n), 1.0 / n, dtype=DTYPE)
    return _projecting_decider(lambda k: ew, w_max, delta, box)


def _projecting_decider(target, w_max: float | None, delta: float, box) -> Decide:
    """Euclidean projection of ``target(k)`` ``(1, n)`` onto the decision's feasible set."""
    qp = None

    def decide(k: int, w_prev: torch.Tensor):
        nonlocal qp
        v = target(k)
        lower, upper = (None, None) if box is None else box(k, w_prev[None])
        if lower is not None:  # a one-step projection: the executed trade's box
            lower, upper = lower[:, :1], upper[:, :1]
        need = min_turnover(w_prev[None], w_max, lower, upper) + 1e-12
        d = torch.clamp(need, min=delta)
        if lower is None and upper is None:
            return project_turnover(v, w_prev[None], d, w_max)[0], d, False
        n = v.shape[-1]
        if qp is None:
            qp = QPSpec(n=n, horizon=1, gamma=0.0, eps=1.0, w_max=w_max, factor="full")
        zero = torch.zeros(1, 1, n, n, dtype=DTYPE)
        w = solve_qp(qp, v[:, None], zero, w_prev[None], d, lower=lower, upper=upper)
        return w[0, 0], d, False

    return decide
