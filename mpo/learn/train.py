"""End-to-end DMPO training through the QP layer, and the evaluation every model shares.

Per sample, the encoder's views go through the DMPO QP (:mod:`mpo.learn.qp`) and the
executed weights ``w*`` earn the realised net return (seed paper, Algorithm 1), net
of the costs a backtest of the same ``[costs]`` charges (:mod:`mpo.learn.losses`)::

    r_net = w*' y_{t} - cost(w* - w_prev; sigma_t, V_t, v) (1 + r_cash_t)

(``y_t = returns[t]``, the period after the decision; ``steps="plan"`` averages the
same over the ``H`` planned steps). The loss is the negative annualised Sharpe ratio of
a batch's net returns, or the negative mean-variance utility ``-(mean - lambda/2 var)``
(seed 002). AdamW, gradient-norm clipping, a cosine learning-rate schedule and early
stopping on validation Sharpe; seeded (every RNG owned or forked) and deterministic on
CPU; the resumable state is handed on at every epoch's end and on Ctrl-C (:func:`fit`).

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

This module holds the DMPO trainer; the parts it shares with the baselines live in
:mod:`mpo.learn.losses` (costs, net returns, losses), :mod:`mpo.learn.model`
(:class:`DMPOModel`), :mod:`mpo.learn.fitting` (the training loop) and
:mod:`mpo.learn.evaluation` (sequential runs), and are importable from here too.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import torch

from mpo.errors import SpecError
from mpo.learn.config import TrainSpec
from mpo.learn.dataset import Split, WindowDataset
from mpo.learn.evaluation import Decide, Evaluation, batched_sharpe, dmpo_decider, run_sequential
from mpo.learn.fitting import BatchLoss, FitResult, Trained, fit
from mpo.learn.limits import trade_box
from mpo.learn.losses import (
    DTYPE,
    PPY,
    TrainingCosts,
    feasibility_violation,
    net_returns,
    regime_labels,
    sample_w_prev,
    sharpe_loss,
    utility_loss,
    with_regime_loss,
)
from mpo.learn.model import DMPOModel, build_dmpo_model, seeded
from mpo.learn.qp import min_turnover

__all__ = [
    "DTYPE",
    "PPY",
    "BatchLoss",
    "DMPOModel",
    "Decide",
    "Evaluation",
    "FitResult",
    "Trained",
    "TrainingCosts",
    "batched_sharpe",
    "build_dmpo_model",
    "dmpo_batch_loss",
    "dmpo_decider",
    "feasibility_violation",
    "fit",
    "net_returns",
    "run_sequential",
    "sample_w_prev",
    "seeded",
    "sharpe_loss",
    "train_dmpo",
    "training_limits",
    "utility_loss",
]


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
    costs = TrainingCosts.from_spec(spec)
    t = spec.train
    limits = model.qp_options.limits
    if limits.active and ds.adv is None:
        raise SpecError(
            "[qp] participation/min_adv need the planner's ADV estimates in the dataset: "
            "build it with make_dataset(..., adv=True) (mpo train does)."
        )
    fixed = None
    if t.w_prev == "fixed":
        # one draw per window, the same every epoch (what makes warm starts hit)
        gen0 = torch.Generator().manual_seed(t.seed)
        size = len(ds.dates)
        fixed = sample_w_prev("random", size, ds.n_assets, spec.qp.w_max, t.w_prev_mix, gen0)

    def batch_loss(pos: np.ndarray, epoch: int, gen: torch.Generator):
        n, B = ds.n_assets, len(pos)
        if fixed is None:
            w_prev = sample_w_prev(t.w_prev, B, n, spec.qp.w_max, t.w_prev_mix, gen)
        else:
            w_prev = fixed[torch.as_tensor(pos)]
        delta, gamma = training_limits(model, spec, epoch)
        delta_b = delta.expand(B) if isinstance(delta, torch.Tensor) else delta
        keys = torch.as_tensor(pos, dtype=torch.long)
        lower = upper = None
        if limits.active:
            lower, upper, _ = trade_box(limits, w_prev, ds.adv[keys], costs.value,
                                        spec.qp.horizon, spec.qp.w_max)  # fmt: skip
            if isinstance(delta_b, torch.Tensor) or math.isfinite(delta_b):
                need = min_turnover(w_prev, spec.qp.w_max, lower, upper) + 1e-12
                delta_b = torch.maximum(torch.as_tensor(delta_b, dtype=DTYPE).expand(B), need)
        w, info = model.solve(model.views(ds.windows(pos)), w_prev, delta_b, gamma, keys=keys,
                              lower=lower, upper=upper)  # fmt: skip
        r = net_returns(w, w_prev, ds.outcomes(pos), costs, t.steps)
        loss = sharpe_loss(r) if t.loss == "sharpe" else utility_loss(r, t.utility_risk_aversion)
        stats = {
            "n": B,
            "violation": feasibility_violation(w, w_prev, delta_b, spec.qp.w_max),
            "starved": int(info.starved.sum()),
            "binding": int(info.turnover_active.sum()),
        }
        if info.warm is not None:
            stats["warm"] = int(info.warm.sum())
        return loss, stats

    return batch_loss


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
    checkpoint: Callable[[dict], None] | None = None,
    regimes: pd.Series | None = None,
) -> Trained:
    """Train a DMPO model end to end (early stopping on the batched validation Sharpe).

    ``resume``, ``on_interrupt``, ``on_epoch_end`` and ``checkpoint`` are :func:`fit`'s.
    With ``[train] regime_loss`` the batch loss adds that weight times the regime head's
    cross-entropy on ``regimes`` (integer regime by date;
    :func:`~mpo.learn.losses.with_regime_loss`: a :class:`~mpo.errors.SpecError` without
    them); otherwise ``regimes`` is unused.
    """
    enc = spec.encoder_config(ds.n_assets)
    model = build_dmpo_model(enc, spec.qp_options(), spec.train.seed)
    costs = TrainingCosts.from_spec(spec)
    loss, desc = dmpo_batch_loss(model, ds, spec), f"dmpo[{spec.train.remedy}]"
    weight = spec.train.regime_loss
    if weight:
        labels = None if regimes is None else regime_labels(ds.dates, regimes)
        loss = with_regime_loss(loss, model, ds.windows, labels, weight)
        desc = f"dmpo[{spec.train.remedy}, regime_loss {weight:g}]"
    result = fit(
        model,
        loss,
        lambda: batched_sharpe(model, ds, val, costs),
        train.positions,
        spec.train,
        epochs=epochs,
        desc=desc,
        progress=progress,
        resume=resume,
        on_interrupt=on_interrupt,
        on_epoch_end=on_epoch_end,
        checkpoint=checkpoint,
    )
    return Trained(model, result, "dmpo")
