"""The generic seeded training loop every learned model shares (:func:`fit`).

AdamW, gradient-norm clipping, a cosine learning-rate schedule and early stopping on a
validation score; seeded (every RNG owned or forked) and deterministic on CPU. The
resumable state (:func:`fit`'s ``FitResult.state``) is handed to ``checkpoint`` at the
end of every epoch (``mpo train`` writes it to a progress file) and to ``on_interrupt``
on Ctrl-C; resuming from it gives the same weights as an uninterrupted run.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from tqdm.auto import tqdm

from mpo.learn.config import TrainSection

__all__ = ["BatchLoss", "FitResult", "Trained", "beats", "fit"]

logger = logging.getLogger(__name__)


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
    checkpoint: Callable[[dict], None] | None = None,
) -> FitResult:
    """Generic seeded training loop (AdamW, clipping, cosine LR, early stopping).

    Parameters
    ----------
    model : nn.Module
    batch_loss : callable
        ``(positions, epoch, generator) -> (loss, stats)``; ``stats`` may hold counts
        ``n``, ``starved``, ``binding`` and a ``violation``.
    validate : callable
        Returns the validation score (higher is better), evaluated after every epoch;
        NaN (no score) ranks below every number (:func:`beats`) and is logged.
    positions : np.ndarray
        Training decision positions, shuffled each epoch with an owned generator.
    opts : TrainSection
        ``lr``, ``weight_decay``, ``clip``, ``schedule``, ``patience``, ``batch_size``,
        ``seed``, ``max_batches``; ``epochs`` unless given.
    resume : dict or None
        A ``FitResult.state`` (or the checkpoint's ``training_state``) to continue from;
        a finished state (last epoch done, or early-stopped) trains no further epoch.
    on_interrupt : callable or None
        Receives the last completed epoch's state when Ctrl-C stops training.
    on_epoch_end : callable or None
        ``(epoch, log)`` hook after each epoch's state is saved (may raise
        ``KeyboardInterrupt``, as tests do).
    checkpoint : callable or None
        Receives the resumable state at the end of every epoch, before ``on_epoch_end``
        (write it durably: a kill at any later point loses no completed epoch).
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
        stop = start if bad >= opts.patience else epochs  # an early-stopped state is final
        bar = tqdm(range(start, stop), desc=desc, disable=not progress, leave=False)
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
                if math.isnan(log["val"]):
                    logger.warning(
                        "%s epoch %d: the validation score is NaN (e.g. a Sharpe ratio of "
                        "returns without variance); it ranks below every finite score.",
                        desc, epoch,
                    )  # fmt: skip
                if best[0] is None or beats(log["val"], best[1]):
                    best, bad = (copy.deepcopy(model.state_dict()), log["val"], epoch), 0
                else:
                    bad += 1
                result.state = _state(model, opt, sched, gen, epoch + 1, history, best, bad)
                if checkpoint is not None:
                    checkpoint(result.state)
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


def beats(score: float, best: float) -> bool:
    """Whether validation ``score`` beats ``best``; NaN ranks below every number."""
    if math.isnan(score):
        return False
    return math.isnan(best) or score > best


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
        if not bool(torch.isfinite(loss.detach())):
            logger.warning("epoch %d: non-finite loss on a batch of %d; step skipped.",
                           epoch, len(pos))  # fmt: skip
            continue
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), opts.clip)
        opt.step()
        losses.append(float(loss.detach()))
        for k in counts:
            counts[k] += int(stats.get(k, 0))
        if "warm" in stats:  # warm-started QP solves ([qp] warm_start)
            counts["warm_solves"] = counts.get("warm_solves", 0) + int(stats["warm"])
        violation = max(violation, float(stats.get("violation", 0.0)))
    model.eval()
    n = max(counts["n"], 1)
    log = {
        "epoch": epoch,
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "starved": counts["starved"] / n,
        "binding": counts["binding"] / n,
        "violation": violation,
    }
    if "warm_solves" in counts:
        log["warm"] = counts["warm_solves"] / n
    return log


@dataclass
class Trained:
    """A trained model with its fit record."""

    model: nn.Module
    fit: FitResult
    kind: str
