"""End-to-end DMPO training through the QP layer, and the evaluation every model shares.

Per sample, the encoder's views go through the DMPO QP (:mod:`mpo.learn.qp`) and the
executed weights ``w*`` earn the realised net return (seed paper, Algorithm 1)::

    r_net = w*' y_{t} - kappa ||w* - w_prev||_1 [- b sum_i sigma_i |z_i|^1.5 sqrt(v / V_i)]

(``y_t = returns[t]``, the period after the decision; ``steps="plan"`` averages the
same over the ``H`` planned steps). The loss is the negative annualised Sharpe ratio of
a batch's net returns, or the negative mean-variance utility ``-(mean - lambda/2 var)``
(seed 002). AdamW, gradient-norm clipping, a cosine learning-rate schedule and early
stopping on validation Sharpe; seeded (every RNG owned or forked) and deterministic on
CPU; Ctrl-C saves a resumable checkpoint (:func:`fit`).

Gradient starvation: when the hard turnover limit binds, the active constraints often
pin ``w_1`` and ``d w_1 / d mu = 0`` exactly (:attr:`mpo.learn.qp.QPInfo.starved`). The
share of such samples is logged per epoch. Remedies (``remedy``):

* ``"l1_penalty"``: train with no hard limit and an extra L1 trading penalty in the QP
  objective (eq. 9), infer with the hard limit;
* ``"larger_delta"``: train with ``delta_factor * delta``, infer with ``delta``;
* ``"learned_delta"``: ``delta_eff = delta * sigmoid(theta)`` with ``theta`` learned
  (gradient flows through the binding limit), used at inference too (never above
  ``delta``);
* ``"curriculum"``: ``delta`` shrinks linearly from ``delta_factor * delta`` to
  ``delta`` over ``curriculum_epochs`` epochs;
* ``"none"``: the hard limit everywhere.

Every decision's feasibility (budget, long-only, cap, turnover) is measured
(:func:`feasibility_violation`) and recorded in the history and evaluations.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm.auto import tqdm

from mpo.learn.config import TrainSection, TrainSpec
from mpo.learn.dataset import Split, WindowDataset
from mpo.learn.encoders import EncoderConfig, Views, build_encoder
from mpo.learn.options import QPOptions
from mpo.learn.qp import QPInfo, QPSpec, make_backend, min_turnover

__all__ = [
    "PPY",
    "CostParams",
    "DMPOModel",
    "Evaluation",
    "FitResult",
    "build_dmpo_model",
    "feasibility_violation",
    "fit",
    "net_returns",
    "run_sequential",
    "sample_w_prev",
    "seeded",
    "sharpe_loss",
    "train_dmpo",
    "utility_loss",
]

logger = logging.getLogger(__name__)

#: Periods per year used to annualise (daily data).
PPY = 252.0
DTYPE = torch.float64


# ---------------------------------------------------------------- costs and losses
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


# ------------------------------------------------------------------------ model
class DMPOModel(nn.Module):
    """Encoder + DMPO QP layer: windows ``(B, T, n, F)`` -> weights ``(B, H, n)``.

    Parameters
    ----------
    encoder_config : EncoderConfig
    qp_options : QPOptions or dict
        Objective weights, hard limit ``delta``, ``learned_delta`` and the QP backend
        by name; a dict (a checkpoint's ``qp_config``) goes through
        :meth:`QPOptions.from_dict`.
    """

    def __init__(
        self, encoder_config: EncoderConfig, qp_options: QPOptions | Mapping[str, Any]
    ) -> None:
        super().__init__()
        self.encoder_config = encoder_config
        self.qp_options = opts = QPOptions.coerce(qp_options)
        c = encoder_config
        self.encoder = build_encoder(c).to(DTYPE)
        self.qp_spec = QPSpec(
            n=c.n_assets,
            horizon=c.horizon,
            rank=None if c.factor == "full" else c.k,
            risk_aversion=opts.risk_aversion,
            gamma=opts.gamma,
            eps=opts.eps,
            w_max=opts.w_max,
            factor=c.factor,
            max_iter=150,
            on_failure="nan",
        )
        self.delta = opts.delta
        self.qp_backend = make_backend(opts.backend)
        self.delta_logit = None
        if opts.learned_delta:
            self.delta_logit = nn.Parameter(torch.tensor(math.log(9.0), dtype=DTYPE))

    def views(self, X: torch.Tensor) -> Views:
        """Encoder views in float64."""
        return self.encoder(X.to(DTYPE)).to(DTYPE)

    def inference_delta(self, w_prev: torch.Tensor) -> torch.Tensor:
        """Turnover limit per sample: the hard ``delta`` (or the learned one below it),
        raised to ``min_turnover(w_prev)`` where drift left no feasible point within it."""
        if self.delta_logit is not None:
            delta = self.delta * torch.sigmoid(self.delta_logit).expand(w_prev.shape[0])
        else:
            delta = torch.full((w_prev.shape[0],), self.delta, dtype=DTYPE)
        need = min_turnover(w_prev, self.qp_spec.w_max) + 1e-12
        return torch.maximum(delta, need)

    def solve(
        self,
        views: Views,
        w_prev: torch.Tensor,
        delta: torch.Tensor | float,
        gamma: float | None = None,
    ) -> tuple[torch.Tensor, QPInfo]:
        """Weights ``(B, H, n)`` and the backend's :class:`~mpo.learn.qp.QPInfo`.

        Samples the solver does not converge on (rare; logged) hold ``w_prev``: a
        feasible decision that carries no gradient.
        """
        w, info = self.qp_backend(
            self.qp_spec, views.mu, views.L, w_prev, delta, d=views.d, gamma=gamma
        )
        bad = ~info.converged | torch.isnan(w).flatten(1).any(-1)
        if bool(bad.any()):
            logger.warning("QP did not converge for %d sample(s); they hold w_prev.",
                           int(bad.sum()))  # fmt: skip
            hold = w_prev.detach()[:, None].expand_as(w)
            w = torch.where(bad[:, None, None], hold, torch.nan_to_num(w))
        return w, info

    def forward(self, X: torch.Tensor, w_prev: torch.Tensor) -> torch.Tensor:
        """Inference decisions (hard turnover limit): ``(B, H, n)``."""
        w, _ = self.solve(self.views(X), w_prev, self.inference_delta(w_prev))
        return w


def seeded(seed: int, fn: Callable[[], Any]) -> Any:
    """Run ``fn`` with torch's global RNG seeded, restoring the caller's RNG state after."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return fn()


def build_dmpo_model(
    encoder_config: EncoderConfig, qp_options: QPOptions | Mapping[str, Any], seed: int
) -> DMPOModel:
    """A freshly initialised :class:`DMPOModel`; same seed -> same initial weights."""
    return seeded(seed, lambda: DMPOModel(encoder_config, qp_options))


# ---------------------------------------------------------------------- fitting
@dataclass
class FitResult:
    """What :func:`fit` did.

    Attributes
    ----------
    history : list of dict
        Per epoch: ``epoch``, ``loss``, ``val``, ``starved`` (share of training samples
        with zero ``d w / d mu``), ``binding`` (turnover limit binds), ``violation``
        (max feasibility violation), ``lr``, ``seconds``.
    best_epoch : int
        Epoch whose weights were kept (-1 if none completed).
    best_val : float
    interrupted : bool
        Ctrl-C stopped training; the resumable state was handed to ``on_interrupt``.
    state : dict or None
        The training state at the last completed epoch (resumable).
    """

    history: list[dict] = field(default_factory=list)
    best_epoch: int = -1
    best_val: float = -math.inf
    interrupted: bool = False
    state: dict | None = None


BatchLoss = Callable[[np.ndarray, int, torch.Generator], tuple[torch.Tensor, dict]]


def _state(model, opt, sched, gen, epoch, history, best, bad) -> dict:
    return {
        "epoch": epoch,
        "model": copy.deepcopy(model.state_dict()),
        "optimizer": copy.deepcopy(opt.state_dict()),
        "scheduler": None if sched is None else copy.deepcopy(sched.state_dict()),
        "generator": gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "history": copy.deepcopy(history),
        "best_state": copy.deepcopy(best[0]),
        "best_val": best[1],
        "best_epoch": best[2],
        "bad_epochs": bad,
    }


def fit(
    model: nn.Module,
    batch_loss: BatchLoss,
    validate: Callable[[], float],
    positions: np.ndarray,
    opts: TrainSection,
    *,
    epochs: int | None = None,
    desc: str = "train",
    progress: bool = True,
    resume: dict | None = None,
    on_interrupt: Callable[[dict], None] | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Generic seeded training loop (AdamW, clipping, cosine LR, early stopping).

    Parameters
    ----------
    model : nn.Module
    batch_loss : callable
        ``(positions, epoch, generator) -> (loss, stats)``; ``stats`` may hold counts
        ``n``, ``starved``, ``binding`` and a ``violation``.
    validate : callable
        Returns the validation score (higher is better), evaluated after every epoch.
    positions : np.ndarray
        Training decision positions, shuffled each epoch with an owned generator.
    opts : TrainSection
        ``lr``, ``weight_decay``, ``clip``, ``schedule``, ``patience``, ``batch_size``,
        ``seed``, ``max_batches``; ``epochs`` unless given.
    resume : dict or None
        A ``FitResult.state`` (or the checkpoint's ``training_state``) to continue from.
    on_interrupt : callable or None
        Receives the last completed epoch's state when Ctrl-C stops training.
    on_epoch_end : callable or None
        ``(epoch, log)`` hook after each epoch's state is saved (may raise
        ``KeyboardInterrupt``, as tests do).
    """
    epochs = opts.epochs if epochs is None else epochs
    opt = torch.optim.AdamW(model.parameters(), lr=opts.lr, weight_decay=opts.weight_decay)
    sched = (
        torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs, eta_min=opts.lr * 0.05)
        if opts.schedule == "cosine"
        else None
    )
    gen = torch.Generator().manual_seed(opts.seed)
    history: list[dict] = []
    best: tuple[dict | None, float, int] = (None, -math.inf, -1)
    bad, start = 0, 0
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(opts.seed + 1)  # dropout
        if resume is not None:
            model.load_state_dict(resume["model"])
            opt.load_state_dict(resume["optimizer"])
            if sched is not None and resume["scheduler"] is not None:
                sched.load_state_dict(resume["scheduler"])
            gen.set_state(resume["generator"])
            torch.set_rng_state(resume["torch_rng"])
            history = list(resume["history"])
            best = (resume["best_state"], resume["best_val"], resume["best_epoch"])
            bad, start = resume["bad_epochs"], resume["epoch"]
        result = FitResult(history=history)
        result.state = _state(model, opt, sched, gen, start, history, best, bad)
        bar = tqdm(range(start, epochs), desc=desc, disable=not progress, leave=False)
        try:
            for epoch in bar:
                t0 = time.perf_counter()
                log = _run_epoch(model, batch_loss, positions, opts, opt, gen, epoch)
                log["val"] = float(validate())
                log["lr"] = opt.param_groups[0]["lr"]
                if sched is not None:
                    sched.step()
                log["seconds"] = time.perf_counter() - t0
                history.append(log)
                if log["val"] > best[1]:
                    best, bad = (copy.deepcopy(model.state_dict()), log["val"], epoch), 0
                else:
                    bad += 1
                result.state = _state(model, opt, sched, gen, epoch + 1, history, best, bad)
                logger.info(
                    "%s epoch %d: loss %.4f, val %.4f, starved %.1f%%, binding %.1f%%, "
                    "max violation %.1e, %.1fs",
                    desc, epoch, log["loss"], log["val"], 100 * log["starved"],
                    100 * log["binding"], log["violation"], log["seconds"],
                )  # fmt: skip
                bar.set_postfix(loss=f"{log['loss']:.3f}", val=f"{log['val']:.3f}",
                                starved=f"{log['starved']:.0%}")  # fmt: skip
                if on_epoch_end is not None:
                    on_epoch_end(epoch, log)
                if bad >= opts.patience:
                    logger.info("%s: early stop after epoch %d (best %d).", desc, epoch, best[2])
                    break
        except KeyboardInterrupt:
            result.interrupted = True
            logger.warning("%s interrupted; state of epoch %d kept.", desc, result.state["epoch"])
            if on_interrupt is not None:
                on_interrupt(result.state)
            return result
    if best[0] is not None:
        model.load_state_dict(best[0])
    result.best_epoch, result.best_val = best[2], best[1]
    return result


def _run_epoch(model, batch_loss, positions, opts, opt, gen, epoch) -> dict:
    model.train()
    order = positions[torch.randperm(len(positions), generator=gen).numpy()]
    batches = [order[i : i + opts.batch_size] for i in range(0, len(order), opts.batch_size)]
    batches = [b for b in batches if len(b) >= 2]
    if opts.max_batches is not None:
        batches = batches[: opts.max_batches]
    losses, counts = [], {"n": 0, "starved": 0, "binding": 0}
    violation = 0.0
    for pos in batches:
        opt.zero_grad(set_to_none=True)
        loss, stats = batch_loss(pos, epoch, gen)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
        opt.step()
        losses.append(float(loss.detach()))
        for k in counts:
            counts[k] += int(stats.get(k, 0))
        violation = max(violation, float(stats.get("violation", 0.0)))
    model.eval()
    n = max(counts["n"], 1)
    return {
        "epoch": epoch,
        "loss": float(np.mean(losses)),
        "starved": counts["starved"] / n,
        "binding": counts["binding"] / n,
        "violation": violation,
    }


# ------------------------------------------------------------------- evaluation
@dataclass
class Evaluation:
    """A sequential run of a policy over one split (``w_prev`` carried and drifted).

    Attributes
    ----------
    name : str
    dates : pd.DatetimeIndex
    net, gross, cost, turnover, excess : np.ndarray
        Per period; ``turnover`` is ``||w - w_prev||_1``.
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
        """Annualised Sharpe (of excess net returns), return, volatility, turnover, cost."""
        from mpo.metrics import sharpe_ratio

        return {
            "sharpe": sharpe_ratio(self.excess, PPY),
            "annual_return": float(self.net.mean() * PPY),
            "annual_volatility": float(self.net.std(ddof=1) * math.sqrt(PPY)),
            "annual_turnover": float(self.turnover.mean() / 2 * PPY),
            "annual_cost": float(self.cost.mean() * PPY),
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
    costs: CostParams,
    w_max: float | None,
    w0: torch.Tensor | None = None,
) -> Evaluation:
    """Run ``decide(k, w_prev) -> (w (n,), delta_used, starved)`` day by day over ``split``.

    Starts from equal weight (or ``w0``); after each period the weights drift with the
    realised returns. Costs are charged on ``w - w_prev``; feasibility of every decision
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
            c = float(trade_cost(z[None], ds.impact[pos][None], costs)[0])
            g = float(w @ y)
            net[k], gross[k], cost[k], turn[k], W[k] = g - c, g, c, float(z.abs().sum()), w
            w_prev = w * (1 + y) / (1 + g)
    excess = net - ds.cash[split.positions].numpy()
    dates = ds.dates[split.positions]
    return Evaluation(name, dates, net, gross, cost, turn, excess, W, viol, starved / T)


def dmpo_decider(model: DMPOModel, ds: WindowDataset, split: Split, chunk: int = 256) -> Decide:
    """Sequential decisions of a DMPO model over ``split`` (views computed in batches)."""
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
        delta = model.inference_delta(w_prev[None])
        w, info = model.solve(views.index(slice(k, k + 1)), w_prev[None], delta)
        return w[0, 0], delta, bool(info.starved[0])

    return decide


def batched_sharpe(model: DMPOModel, ds: WindowDataset, split: Split, costs: CostParams) -> float:
    """Validation score: annualised Sharpe of one-step net returns from equal weight,
    every decision under the inference (hard) limit; one batched solve."""
    model.eval()
    with torch.no_grad():
        pos = split.positions
        n = ds.n_assets
        w_prev = torch.full((len(pos), n), 1.0 / n, dtype=DTYPE)
        w = model(ds.windows(pos), w_prev)
        r = net_returns(w, w_prev, ds.targets(pos), ds.impact[pos], costs)
        ex = (r - ds.cash[pos]).numpy()
    sd = ex.std(ddof=1)
    return float(ex.mean() / sd * math.sqrt(PPY)) if sd > 0 else 0.0


# ------------------------------------------------------------------ DMPO trainer
def training_limits(model: DMPOModel, spec: TrainSpec, epoch: int) -> tuple[Any, float]:
    """``(delta, gamma)`` the QP uses in training under ``spec.train.remedy``."""
    t, delta, gamma = spec.train, model.delta, spec.qp_gamma
    if t.remedy == "l1_penalty":
        return math.inf, gamma + t.l1_penalty
    if t.remedy == "larger_delta":
        return delta * t.delta_factor, gamma
    if t.remedy == "learned_delta":
        return delta * torch.sigmoid(model.delta_logit), gamma
    if t.remedy == "curriculum":
        frac = max(0.0, 1.0 - epoch / t.curriculum_epochs)
        return delta * (1 + (t.delta_factor - 1) * frac), gamma
    return delta, gamma


def dmpo_batch_loss(model: DMPOModel, ds: WindowDataset, spec: TrainSpec) -> BatchLoss:
    """The DMPO training step's loss on a batch of positions (see module docstring)."""
    costs = CostParams.from_spec(spec)
    t = spec.train

    def batch_loss(pos: np.ndarray, epoch: int, gen: torch.Generator):
        n, B = ds.n_assets, len(pos)
        w_prev = sample_w_prev(t.w_prev, B, n, spec.qp.w_max, t.w_prev_mix, gen)
        delta, gamma = training_limits(model, spec, epoch)
        delta_b = delta.expand(B) if isinstance(delta, torch.Tensor) else delta
        w, info = model.solve(model.views(ds.windows(pos)), w_prev, delta_b, gamma)
        r = net_returns(w, w_prev, ds.targets(pos), ds.impact[pos], costs, t.steps)
        loss = sharpe_loss(r) if t.loss == "sharpe" else utility_loss(r, t.utility_risk_aversion)
        stats = {
            "n": B,
            "violation": feasibility_violation(w, w_prev, delta_b, spec.qp.w_max),
            "starved": int(info.starved.sum()),
            "binding": int(info.turnover_active.sum()),
        }
        return loss, stats

    return batch_loss


@dataclass
class Trained:
    """A trained model with its fit record."""

    model: nn.Module
    fit: FitResult
    kind: str


def train_dmpo(
    spec: TrainSpec,
    ds: WindowDataset,
    train: Split,
    val: Split,
    *,
    epochs: int | None = None,
    progress: bool = True,
    resume: dict | None = None,
    on_interrupt: Callable[[dict], None] | None = None,
    on_epoch_end: Callable[[int, dict], None] | None = None,
) -> Trained:
    """Train a DMPO model end to end (early stopping on the batched validation Sharpe)."""
    enc = spec.encoder_config(ds.n_assets)
    model = build_dmpo_model(enc, spec.qp_options(), spec.train.seed)
    costs = CostParams.from_spec(spec)
    result = fit(
        model,
        dmpo_batch_loss(model, ds, spec),
        lambda: batched_sharpe(model, ds, val, costs),
        train.positions,
        spec.train,
        epochs=epochs,
        desc=f"dmpo[{spec.train.remedy}]",
        progress=progress,
        resume=resume,
        on_interrupt=on_interrupt,
        on_epoch_end=on_epoch_end,
    )
    return Trained(model, result, "dmpo")
