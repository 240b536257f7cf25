"""Train one model on one training window: what a walk-forward fold does per learned spec.

:func:`train_model` builds the dataset from data that **end at the training
window's last date** (labels cannot reach past it), splits its decisions
chronologically into training and validation (early stopping) with a purge,
and trains one of the three models (``dmpo``, ``two_stage``, ``direct``)
durably: a progress file per epoch, so a killed fold resumes from its last
completed epoch with the same final weights (:mod:`mpo.learn.progress`). DMPO with
``[train] regime_loss`` needs the regime labels of the data (``regimes``).
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from mpo.data.market import MarketData
from mpo.errors import DataError, SpecError
from mpo.learn.config import TrainSpec

__all__ = ["MODELS", "train_model", "train_val_split"]

logger = logging.getLogger(__name__)

#: The models a training spec trains, by checkpoint kind.
MODELS = ("dmpo", "two_stage", "direct")


def train_val_split(dataset, val: float, purge: int | None = None, min_samples: int = 10):
    """Training and validation decisions in time order, ``purge`` positions apart.

    ``purge`` defaults to ``T + H - 1`` (no validation window or target
    overlaps a training target).
    """
    from mpo.learn.dataset import Split

    if not 0 < val < 1:
        raise SpecError(f"the validation fraction must be in (0, 1), got {val}.")
    T, H = dataset.spec.window, dataset.spec.horizon
    gap = T + H - 1 if purge is None else purge
    pos = dataset.positions
    usable = len(pos) - gap
    n_val = int(round(usable * val))
    n_train = usable - n_val
    if min(n_train, n_val) < min_samples:
        raise DataError(
            f"{len(pos)} decision dates ({dataset.dates[0].date()} to "
            f"{dataset.dates[-1].date()}) give train/val = {n_train}/{n_val} samples after a "
            f"purge of {gap}; each needs >= {min_samples}. Use a longer training window."
        )

    def split(name: str, p: np.ndarray) -> Split:
        return Split(name, p, dataset.dates[p[0]], dataset.dates[p[-1]])

    return split("train", pos[:n_train]), split("val", pos[n_train + gap :])


def train_model(
    spec: TrainSpec,
    market: MarketData,
    model: str,
    run_dir: str | Path,
    *,
    start=None,
    end=None,
    progress: bool = False,
    regimes=None,
) -> dict:
    """Train ``model`` of ``spec`` on decisions in ``[start, end]`` of ``market``.

    Parameters
    ----------
    spec
        The training spec (features, encoder, QP, costs, optimiser).
    market
        The data; only dates up to ``end`` are read (the feature warm-up
        reads history before ``start``).
    model
        ``dmpo``, ``two_stage`` or ``direct``.
    run_dir
        Folder of the checkpoint ``<model>.pt`` and its progress file; a
        finished checkpoint of the same spec, data and seed is reused.
    regimes
        ``pd.Series`` of the integer regime of each date (e.g.
        ``SyntheticTruth.regimes``): the labels of ``[train] regime_loss``, which DMPO
        needs (:class:`~mpo.errors.SpecError` without them); the baselines ignore both.

    Returns
    -------
    dict
        ``checkpoint`` (path), ``best_epoch``, ``val_score`` (the
        early-stopping score at the kept epoch), ``splits``.
    """
    import torch

    from mpo.learn.baselines import train_direct, train_two_stage
    from mpo.learn.cli import _checkpoint, _train_durably
    from mpo.learn.dataset import history_tail, make_dataset
    from mpo.learn.regimes import check_regime_labels
    from mpo.learn.train import TrainingCosts
    from mpo.learn.train import train_dmpo as train_dmpo_labelled

    if model not in MODELS:
        raise SpecError(f"unknown model {model!r}; one of {', '.join(MODELS)}.")
    if model == "dmpo":
        check_regime_labels(spec, regimes, market.name, who="the walk-forward refit")
    torch.set_num_threads(1)  # tiny batched solves: threads cost ~10x on 2 cores
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    fs = spec.feature_spec()
    cal = market.calendar
    lo = 0
    if start is not None:
        lo = max(int(cal.searchsorted(start)) - history_tail(fs) - fs.warmup, 0)
    window = market.slice(cal[lo], end)
    costs = TrainingCosts.from_spec(spec)
    ds = make_dataset(window, fs, costs.model.estimates, adv=spec.has_limits)
    train, val = train_val_split(ds, spec.split.val, spec.split.purge)
    splits = {sp.name: sp.describe() for sp in (train, val)}

    def train_dmpo(*args, **kw):
        return train_dmpo_labelled(*args, regimes=regimes, **kw)

    fn = {"dmpo": train_dmpo, "two_stage": train_two_stage, "direct": train_direct}[model]

    def to_checkpoint(tr, kind: str, sp):
        ck = _checkpoint(
            tr.model.state_dict(), sp, ds, train, kind, spec.train.seed, tr.fit.history, splits
        )
        ck.extra["best_epoch"] = tr.fit.best_epoch
        return ck

    tr = _train_durably(
        model,
        spec,
        run_dir,
        ds.fingerprint,
        lambda **kw: fn(spec, ds, train, val, progress=progress, **kw),
        to_checkpoint,
    )
    logger.info("trained %s on %s to %s (%s)", model, train.start.date(), val.end.date(), run_dir)
    return {
        "checkpoint": str(run_dir / f"{model}.pt"),
        "best_epoch": int(tr.fit.best_epoch),
        "val_score": float(tr.fit.best_val),
        "splits": splits,
    }
