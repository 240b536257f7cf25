"""Pictures of a tuning study, drawn from its :class:`~mpo.tuning.study.TuningResult`.

The study writes trials; these functions only read them (the trials frame)
and never run a backtest.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
import pandas as pd

from mpo.io import atomic_path
from mpo.tuning.storage import open_storage

if TYPE_CHECKING:
    from mpo.tuning.study import TuningResult

__all__ = ["write_plots"]

logger = logging.getLogger(__name__)


def write_plots(result: TuningResult, run_dir: Path) -> dict[str, str]:
    """Draw the study's pictures into ``run_dir`` as PNG files (written atomically).

    Reads only ``result`` (its trials frame and spec) and, for parameter
    importances, the study's trials in its storage.

    Returns
    -------
    dict
        Plot name (``history``, ``slices``, ``importances``, ``risk_return``)
        -> file path, for the plots that could be drawn.
    """
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out: dict[str, str] = {}
    df = result.trials
    done = df[df["state"] == "COMPLETE"] if len(df) else df
    if done.empty:
        return out
    for name, draw in _PLOTS:
        fig = draw(plt, result, done)
        if fig is None:
            continue
        path = run_dir / f"{name}.png"
        with atomic_path(path) as tmp:
            fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
        plt.close(fig)
        out[name] = str(path)
    return out


def _history(plt, result: TuningResult, done: pd.DataFrame):
    """Optimisation history: trial values and the best so far; pruned trials marked."""
    df = result.trials
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.scatter(done["number"], done["value"], s=14, label="completed trial")
    best_so_far = done.sort_values("number")["value"].cummax()
    ax.step(
        done.sort_values("number")["number"],
        best_so_far,
        where="post",
        color="C3",
        label="best so far",
    )
    pruned = df[df["state"] == "PRUNED"]
    if len(pruned):
        ax.scatter(
            pruned["number"],
            np.full(len(pruned), done["value"].min()),
            marker="x",
            color="grey",
            s=14,
            label="pruned (position not a value)",
        )
    ax.set_xlabel("trial")
    ax.set_ylabel(f"train {result.objective}")
    ax.set_title("Optimisation history (training window)")
    ax.legend(fontsize=8)
    return fig


def _params(done: pd.DataFrame) -> list[str]:
    return [c for c in done.columns if c.startswith("param_")]


def _slices(plt, result: TuningResult, done: pd.DataFrame):
    """Objective against each parameter (log axes where searched on a log scale)."""
    params = _params(done)
    fig, axes = plt.subplots(1, len(params), figsize=(4 * len(params), 3.5), squeeze=False)
    for ax, col in zip(axes[0], params, strict=True):
        name = col.removeprefix("param_")
        ax.scatter(done[col], done["value"], c=done["number"], cmap="viridis", s=14)
        p = result.spec.tuning.params.get(name)
        if p is not None and p.log:
            ax.set_xscale("log")
        ax.set_xlabel(name)
        ax.set_ylabel(f"train {result.objective}")
    fig.suptitle("Slices (colour: trial number)")
    return fig


def _importances(plt, result: TuningResult, done: pd.DataFrame):
    """fANOVA parameter importances, when there are enough trials."""
    if len(done) < 4 or len(_params(done)) < 2:
        return None
    try:
        study = optuna.load_study(
            study_name=result.study_name, storage=open_storage(result.storage)
        )
        imp = optuna.importance.get_param_importances(study)
    except (RuntimeError, ValueError) as exc:  # e.g. too few distinct values
        logger.info("no importance plot: %s", exc)
        return None
    fig, ax = plt.subplots(figsize=(5, 0.6 + 0.4 * len(imp)))
    names = list(imp)[::-1]
    ax.barh(names, [imp[n] for n in names])
    ax.set_xlabel("importance (fANOVA)")
    return fig


def _pareto_front(vol: np.ndarray, ret: np.ndarray) -> list[int]:
    """Indices of the trials no other trial beats in return at lower volatility."""
    front, best_ret = [], -np.inf
    for i in np.argsort(vol):
        if ret[i] > best_ret:
            front.append(int(i))
            best_ret = ret[i]
    return front


def _risk_return(plt, result: TuningResult, done: pd.DataFrame):
    """Risk/return cloud of the trials with the Pareto front and the selected trial."""
    if not {"annual_volatility", "annual_return"} <= set(done.columns):
        return None
    from matplotlib.ticker import PercentFormatter

    vol = done["annual_volatility"].to_numpy()
    ret = done["annual_return"].to_numpy()
    front = _pareto_front(vol, ret)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    sc = ax.scatter(vol, ret, c=done["value"], cmap="viridis", s=16)
    fig.colorbar(sc, label=f"train {result.objective}")
    ax.plot(vol[front], ret[front], "-o", color="C3", ms=4, label="Pareto front")
    b = done[done["number"] == result.best_number]
    ax.scatter(
        b["annual_volatility"],
        b["annual_return"],
        marker="*",
        s=180,
        color="C1",
        edgecolor="k",
        label="selected",
        zorder=5,
    )
    ax.set_xlabel("annual volatility (train)")
    ax.set_ylabel("annual return (train)")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_title("Trials on the training window")
    ax.legend(fontsize=8)
    return fig


#: The plots, in drawing order: name -> function(pyplot, result, completed trials).
_PLOTS = (
    ("history", _history),
    ("slices", _slices),
    ("importances", _importances),
    ("risk_return", _risk_return),
)
