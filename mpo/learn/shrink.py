"""The decision-aware shrinkage study (``mpo shrink``).

For each seed, a synthetic monthly factor universe (:mod:`mpo.learn.shrink_universe`) in
the ``N ~ T`` regime (``n_assets`` close to the ``lookback`` months each covariance is
estimated from) is split chronologically into train, validation and test decision months.
One linear return head ``mu_hat = a + b x`` is fitted by least squares (MSE) on the
training months and shared by every method, so the covariance is the only difference
(:mod:`mpo.learn.shrink_models`):

(a) ``plug_in``: the sample covariance, (b) ``ledoit_wolf``: the analytic Ledoit-Wolf
intensity of each window, (c) ``decision_aware``: ``(1 - delta) S + delta m I`` with one
``delta`` chosen by gradient through the QP layer (Adam on ``logit(delta)``) to maximise
the realised net Sharpe of the training months, (d) ``learned_sigma``: a static
``Sigma = L L'`` learned the same way (optional). ``oracle`` (the true covariance)
bounds what any covariance estimate could add.

End-to-end training scores every training month in one batched solve, each month from
the weights the model's own sequential path held before it (the reference path,
recomputed every ``refresh`` epochs, detached). The epoch with the best validation Sharpe
(same objective on the validation months) is kept. Every method is then run sequentially
from equal weight over all decision months, and its out-of-sample Sharpe is that of the
test months' net returns.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch

from mpo.errors import SpecError
from mpo.learn.shrink_models import (
    DTYPE,
    DecisionAware,
    Lane,
    LearnedSigma,
    LedoitWolfRisk,
    Oracle,
    Panel,
    PlugIn,
    RiskModel,
    Trader,
    build_panel,
    sample_covariance,
    sharpe,
    shrunk_covariance,
)
from mpo.learn.shrink_universe import make_universe

__all__ = ["ShrinkConfig", "Splits", "fit_head", "fit_lanes", "run_study"]

logger = logging.getLogger(__name__)

_MIN_MONTHS = 6  # decision months each split needs at least


@dataclass(frozen=True)
class ShrinkConfig:
    """Options of the study (constructor stores, :meth:`check` validates).

    Parameters
    ----------
    seeds : tuple of int
        One universe per seed.
    n_assets, lookback, months : int
        Assets ``N``, months ``T`` per covariance estimate, months simulated per universe
        (the first ``lookback`` only feed the first estimate).
    n_factors, alpha, persistence, market_vol : int, float, float, float
        The universe (:func:`mpo.learn.shrink_universe.make_universe`).
    val, test : float
        Shares of the decision months for validation and test (the rest trains).
    lam : float
        Weight of ``mu_hat`` against ``1/2 w' Sigma w`` in the QP.
    cost_bps : float
        Proportional trading cost (basis points of the L1 trade), realised and planned.
    turnover : float
        Turnover limit per month (L1; ``inf``: none).
    w_max : float or None
        Cap on every weight.
    epochs, patience, refresh : int
        End-to-end epochs, early-stopping patience (epochs without a better validation
        Sharpe) and epochs between reference-path updates.
    lr, sigma_lr : float
        Adam step sizes of ``logit(delta)`` and of the learned factor ``L``.
    learned_sigma : bool
        Also train (d), the full learned-Sigma model.
    """

    seeds: tuple[int, ...] = tuple(range(10))
    n_assets: int = 40
    lookback: int = 48
    months: int = 360
    n_factors: int = 3
    alpha: float = 0.005
    persistence: float = 0.8
    market_vol: float = 0.045
    val: float = 0.15
    test: float = 0.35
    lam: float = 0.2
    cost_bps: float = 10.0
    turnover: float = 0.5
    w_max: float | None = None
    epochs: int = 30
    patience: int = 10
    refresh: int = 10
    lr: float = 0.1
    sigma_lr: float = 2e-3
    learned_sigma: bool = True

    def __post_init__(self) -> None:
        self.check()

    def check(self) -> None:
        """Raise :class:`~mpo.errors.SpecError` naming the first bad option and a fix."""
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise SpecError(f"seeds must be a non-empty list of distinct ints, got {self.seeds=}.")
        if self.n_assets < 2:
            raise SpecError(f"n_assets must be >= 2, got {self.n_assets=}.")
        if self.lookback < 2:
            raise SpecError(f"lookback must be >= 2 months, got {self.lookback=}.")
        for name in ("val", "test"):
            v = getattr(self, name)
            if not 0 < v < 1:
                raise SpecError(f"{name} must be in (0, 1), got {v!r}.")
        if self.val + self.test >= 0.8:
            raise SpecError(f"val + test must leave >= 20% to train, got {self.val + self.test}.")
        s = self.splits()
        need = math.ceil(_MIN_MONTHS / min(self.val, self.test, 1 - self.val - self.test))
        if min(s.train, s.val, s.test) < _MIN_MONTHS:
            raise SpecError(
                f"months={self.months} with lookback={self.lookback} leaves {s.train} train, "
                f"{s.val} validation and {s.test} test months; each needs >= {_MIN_MONTHS}: raise "
                f"months (e.g. months >= {self.lookback + need})."
            )
        for name in ("lam", "lr", "sigma_lr", "market_vol"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise SpecError(f"{name} must be finite and > 0, got {v!r}.")
        if not (math.isfinite(self.cost_bps) and self.cost_bps >= 0):
            raise SpecError(f"cost_bps must be finite and >= 0, got {self.cost_bps=}.")
        if not self.turnover > 0:
            raise SpecError(f"turnover must be > 0 (inf for no limit), got {self.turnover=}.")
        if self.w_max is not None and not self.w_max * self.n_assets >= 1:
            raise SpecError(f"w_max must be >= 1/n_assets, got {self.w_max=}.")
        for name in ("epochs", "patience", "refresh"):
            if getattr(self, name) < 1:
                raise SpecError(f"{name} must be >= 1, got {getattr(self, name)!r}.")

    def splits(self) -> Splits:
        """Train, validation and test month counts of every universe."""
        J = self.months - self.lookback
        n_val, n_test = round(self.val * J), round(self.test * J)
        return Splits(J - n_val - n_test, n_val, n_test)

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


@dataclass(frozen=True)
class Splits:
    """Chronological split of the decision months."""

    train: int
    val: int
    test: int

    def ranges(self) -> tuple[range, range, range]:
        a, b = self.train, self.train + self.val
        return range(0, a), range(a, b), range(b, b + self.test)


def fit_head(signal: np.ndarray, returns: np.ndarray) -> tuple[float, float]:
    """Least-squares ``(a, b)`` of ``r_{i,t} = a + b x_{i,t}`` pooled over the given months."""
    X = np.column_stack([np.ones(signal.size), signal.ravel()])
    coef, *_ = np.linalg.lstsq(X, returns.ravel(), rcond=None)
    return float(coef[0]), float(coef[1])


def fit_lanes(
    lanes: list[Lane], trader: Trader, train: range, val: range, cfg: ShrinkConfig
) -> list[list[dict]]:
    """Adam on ``-Sharpe`` of each lane's training months; keep its best validation epoch.

    Lanes are independent (one parameter group each, losses summed, so each lane takes
    exactly its own Adam steps) but share every batched solve. A lane stops after
    ``patience`` epochs without a better validation Sharpe (its gradients are dropped).
    Returns one history per lane (per epoch: validation and training Sharpe and the
    model's parameters); every model holds its kept state afterwards.
    """
    models = [model for model, _ in lanes]
    opt = torch.optim.Adam(
        [{"params": list(m.parameters()), "lr": cfg.lr if isinstance(m, DecisionAware)
          else cfg.sigma_lr} for m in models]
    )  # fmt: skip
    tr, va = torch.tensor(list(train)), torch.tensor(list(val))
    n_lanes = len(lanes)
    best, stale = [-math.inf] * n_lanes, [0] * n_lanes
    kept = [copy.deepcopy(m.state_dict()) for m in models]
    histories: list[list[dict]] = [[] for _ in lanes]
    active = list(range(n_lanes))
    w_prev = None
    for epoch in range(cfg.epochs + 1):
        if epoch % cfg.refresh == 0:
            w_prev = trader.rollout(lanes, range(0, val.stop))["w_prev"]
        with torch.no_grad():
            sub = [lanes[i] for i in active]
            vals = trader.objective(sub, va, w_prev[active][:, va]).tolist()
        still = []
        for i, v in zip(active, vals, strict=True):
            histories[i].append({"epoch": epoch, "val": v, **models[i].describe()})
            if v > best[i]:
                best[i], kept[i], stale[i] = v, copy.deepcopy(models[i].state_dict()), 0
            else:
                stale[i] += 1
            if epoch < cfg.epochs and stale[i] < cfg.patience:
                still.append(i)
        active = still
        if not active:
            break
        opt.zero_grad(set_to_none=True)
        train_sharpe = trader.objective([lanes[i] for i in active], tr, w_prev[active][:, tr])
        (-train_sharpe.sum()).backward()
        opt.step()
        for i, v in zip(active, train_sharpe.tolist(), strict=True):
            histories[i][-1]["train"] = v
    for model, state in zip(models, kept, strict=True):
        model.load_state_dict(state)
    return histories


def _metrics(net: np.ndarray, turnover: np.ndarray) -> dict:
    return {
        "sharpe": float(sharpe(torch.tensor(net))),
        "annual_return": float(net.mean() * 12),
        "annual_vol": float(net.std(ddof=1) * math.sqrt(12)),
        "annual_turnover": float(turnover.mean() * 12),
    }


@dataclass
class _Seed:
    """One universe's panel, head and risk models."""

    seed: int
    panel: Panel
    head: tuple[float, float]
    lw_mean: float
    models: list[RiskModel]


def _prepare(cfg: ShrinkConfig, seed: int) -> _Seed:
    uni = make_universe(
        cfg.n_assets, cfg.months, seed, n_factors=cfg.n_factors, alpha=cfg.alpha,
        persistence=cfg.persistence, market_vol=cfg.market_vol,
    )  # fmt: skip
    train = cfg.splits().ranges()[0]
    L0 = cfg.lookback
    a, b = fit_head(uni.signal[L0 : L0 + train.stop], uni.returns[L0 : L0 + train.stop])
    panel = build_panel(uni.returns, a + b * uni.signal, L0)
    lw0 = float(panel.lw[: train.stop].mean())
    models: list[RiskModel] = [PlugIn(), LedoitWolfRisk(), DecisionAware(lw0)]
    if cfg.learned_sigma:
        window = uni.returns[train.stop : train.stop + L0]  # before the first val month
        models.append(LearnedSigma(shrunk_covariance(sample_covariance(window), lw0), panel.k))
    models.append(Oracle(uni.truth.covariance.to_numpy(), panel.k))
    return _Seed(seed, panel, (a, b), lw0, models)


def run_study(cfg: ShrinkConfig) -> dict:
    """Every seed of ``cfg``; the JSON-able results (config, per-seed rows, summary).

    Seeds run in lockstep (each batched solve holds every seed's samples); each seed's
    numbers depend only on its own universe.
    """
    from mpo.io import package_versions
    from mpo.learn.shrink_report import summarise

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    seeds = [_prepare(cfg, seed) for seed in cfg.seeds]
    s0 = seeds[0].panel
    trader = Trader(s0.n, s0.k, cfg.lam, cfg.cost_bps * 1e-4, cfg.turnover, cfg.w_max)
    train, val, test = cfg.splits().ranges()
    t_prep = time.perf_counter() - t0
    learn = [(m, s.panel) for s in seeds for m in s.models if m.learnable]
    histories = fit_lanes(learn, trader, train, val, cfg)
    t_fit = time.perf_counter() - t0 - t_prep
    lanes = [(m, s.panel) for s in seeds for m in s.models]
    path = trader.rollout(lanes, range(0, test.stop))
    net, turn = path["net"].numpy(), path["turnover"].numpy()
    rows, lane, hist = [], 0, iter(histories)
    for s in seeds:
        row = {"seed": s.seed, "head": {"a": s.head[0], "b": s.head[1]}, "methods": {},
               "lw_mean_train": s.lw_mean, "history": {}}  # fmt: skip
        for model in s.models:
            row["methods"][model.name] = {
                split: _metrics(net[lane, r.start : r.stop], turn[lane, r.start : r.stop])
                for split, r in (("train", train), ("val", val), ("test", test))
            } | {"params": model.describe()}
            if model.learnable:
                row["history"][model.name] = next(hist)
            lane += 1
        row["delta_star"] = row["methods"]["decision_aware"]["params"]["delta"]
        rows.append(row)
        logger.info(
            "seed %d: test Sharpe %s, delta* %.3f (LW %.3f)", s.seed,
            {m: round(v["test"]["sharpe"], 2) for m, v in row["methods"].items()},
            row["delta_star"], s.lw_mean,
        )  # fmt: skip
    seconds = time.perf_counter() - t0
    return {
        "config": cfg.to_dict(),
        "seeds": list(cfg.seeds),
        "splits": asdict(cfg.splits()),
        "per_seed": rows,
        "summary": summarise(rows),
        "timing": {"prepare": t_prep, "fit": t_fit, "total": seconds},
        "versions": package_versions(),
        "dtype": str(DTYPE),
    }
