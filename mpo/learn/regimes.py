"""Regime labels in training: DMPO with ``[train] regime_loss``, and the regime head's scores.

Labels exist where the data carry them: the synthetic market with planted regimes
(``[data.regimes]``, :attr:`mpo.data.synthetic.SyntheticTruth.regimes`), or a
``pd.Series`` of integer regimes by date handed to the Python API. They reach training
by dataset position (:func:`mpo.learn.losses.regime_labels`: the regime of each
decision's first planned period, a target like the realised returns) and are never an
input of a decision.

:func:`mpo.learn.train.train_dmpo` takes the labels (``regimes=``) and wraps its batch
loss with :func:`mpo.learn.losses.with_regime_loss` under ``regime_loss``.
:func:`regime_scores` scores a trained
regime head per split against two baselines that know only the training split's
labels: always the majority regime (accuracy) and its regime frequencies as constant
probabilities (cross-entropy)::

    accuracy        = mean_b [argmax_k p_bk == label_b]
    majority        = mean_b [label_b == most frequent training label]
    cross_entropy   = mean_b -log p_b[label_b]                (K >= regimes only)
    prior_ce        = mean_b -log q[label_b],  q = (training counts + 1) / (N + R)
    matched_accuracy: accuracy after the best one-to-one renaming of the head's regimes

``matched_accuracy`` matters when the head learned through the Sharpe loss alone (no
``regime_loss``): its regime names are then arbitrary.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd
import torch

from mpo.errors import SpecError
from mpo.learn.config import TrainSpec
from mpo.learn.dataset import Split, WindowDataset
from mpo.learn.losses import regime_cross_entropy, regime_labels

__all__ = [
    "check_regime_labels",
    "format_regime_scores",
    "regime_scores",
]

logger = logging.getLogger(__name__)


def check_regime_labels(
    spec: TrainSpec, regimes: pd.Series | None, data_name: str, who: str = "mpo train"
) -> None:
    """Raise :class:`SpecError` when ``[train] regime_loss`` is set and ``regimes`` is ``None``.

    ``who`` names the trainer in the message (``mpo train``, a walk-forward refit).
    """
    w = spec.train.regime_loss
    if not w or regimes is not None:
        return
    fix = (
        "Add a [data.regimes] table to the spec (an empty one plants the default calm / "
        "stress pair; see the README's regime head section) and train with --data synthetic"
        if who == "mpo train"
        else "Train it with mpo train --data synthetic and a [data.regimes] table (see the "
        "README's regime head section), or pass the labels (train_model(..., regimes=))"
    )
    raise SpecError(
        f"[train] regime_loss = {w}: {who} has no regime labels for the {data_name!r} data "
        f"(only the synthetic market with planted regimes has them). {fix}; or remove "
        "regime_loss ([encoder] regimes alone trains the regime head through the Sharpe "
        "loss)."
    )


def _matched_accuracy(pred: np.ndarray, lab: np.ndarray, K: int, R: int) -> float:
    """Accuracy after the best one-to-one renaming of the ``K`` predicted regimes."""
    from scipy.optimize import linear_sum_assignment

    hits = np.zeros((K, R))
    np.add.at(hits, (pred, lab), 1)
    rows, cols = linear_sum_assignment(hits, maximize=True)
    return float(hits[rows, cols].sum() / len(lab))


def _split_scores(p: torch.Tensor, lab: torch.Tensor, counts: np.ndarray) -> dict:
    K, R = p.shape[1], len(counts)
    pred, y = p.argmax(-1).numpy(), lab.numpy()
    if len(y) == 0:  # no known label in this split
        keys = ("accuracy", "majority", "matched_accuracy", "cross_entropy", "prior_cross_entropy")
        return {"n": 0, **dict.fromkeys(keys)}
    prior = (counts + 1) / (counts.sum() + R)
    fits = K >= R  # every label has a probability
    return {
        "n": len(y),
        "accuracy": float((pred == y).mean()),
        "majority": float((y == int(counts.argmax())).mean()),
        "matched_accuracy": _matched_accuracy(pred, y, K, R),
        "cross_entropy": float(regime_cross_entropy(p, lab)) if fits else None,
        "prior_cross_entropy": float(-np.log(prior[y]).mean()),
    }


def regime_scores(
    model, ds: WindowDataset, splits: tuple[Split, ...], regimes: pd.Series
) -> dict | None:
    """Scores of ``model``'s regime head per split (module docstring); ``None`` without a head.

    ``splits``: the training split first (its labels define the baselines), then the
    others. Labels unknown on a date (``-1``) are left out.
    """
    labels = regime_labels(ds.dates, regimes)
    known = labels[labels >= 0]
    if len(known) == 0:
        return None
    R = int(known.max()) + 1
    out, counts = {}, None
    model.eval()
    for split in splits:
        lab = labels[torch.as_tensor(split.positions, dtype=torch.long)]
        with torch.no_grad():
            p = model.views(ds.windows(split.positions)).regime
        if p is None or p.shape[1] < 2:
            return None
        keep = lab >= 0
        lab, p = lab[keep], p[keep]
        if counts is None:
            counts = np.bincount(lab.numpy(), minlength=R).astype(float)
        out[split.name] = _split_scores(p, lab, counts)
    return out


def format_regime_scores(record: dict) -> str:
    """The regime lines printed under ``mpo train``'s table (``results["regimes"]``)."""
    lines = [
        f"regime head against {record['n_regimes']} planted regimes (regime_loss "
        f"{record['regime_loss'] or 0:g}); baselines: always the majority regime, the "
        "training frequencies"
    ]
    for name, by_split in record["models"].items():
        parts = []
        for split in ("val", "test"):
            s = by_split[split]
            if not s["n"]:
                parts.append(f"{split}: no labels")
                continue
            ce = s["cross_entropy"]
            ce_text = "n/a" if ce is None or not math.isfinite(ce) else f"{ce:.3f}"
            parts.append(
                f"{split} accuracy {s['accuracy']:.0%} (majority {s['majority']:.0%}), "
                f"cross-entropy {ce_text} (prior {s['prior_cross_entropy']:.3f})"
            )
        lines.append(f"  {name}: " + "; ".join(parts))
    return "\n".join(lines)
