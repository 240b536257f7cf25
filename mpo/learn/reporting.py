"""The training run's table and curves (``mpo train`` prints and saves them)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["EPOCH_PANELS", "SPLIT_PANELS", "format_results", "save_curves"]

#: Optional per-epoch history keys drawn as a panel each when a history records them
#: (key: panel title). Training records ``loss`` and ``val`` only today; these appear
#: once its validation records the concentration and drawdown of the batched solve.
EPOCH_PANELS = {
    "val_max_drawdown": "validation max drawdown",
    "val_effective_names": "validation effective names (1/HHI)",
}

#: Per-split evaluation metrics drawn as grouped bars when ``save_curves`` has them.
SPLIT_PANELS = {
    "max_drawdown": "max drawdown (sequential)",
    "effective_names": "effective names 1/HHI (sequential)",
}


def _epoch_panels(histories: dict) -> list[str]:
    return [k for k in EPOCH_PANELS if any(k in h for hist in histories.values() for h in hist)]


def save_curves(histories: dict, target: Path, metrics: dict | None = None) -> None:
    """PNG of training loss and validation score per epoch, one line per model (panels
    three to a row).

    A history key of :data:`EPOCH_PANELS` adds a per-epoch panel when some model
    records it. ``metrics`` (``results["metrics"]``: model -> split -> metrics) adds one
    panel per :data:`SPLIT_PANELS` metric: a bar per model and split (val, test).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpo.io import atomic_path

    extra = _epoch_panels(histories)
    split_keys = [k for k in SPLIT_PANELS if metrics and _has(metrics, k)]
    n_panels = 2 + len(extra) + len(split_keys)
    cols = min(n_panels, 3)
    rows = -(-n_panels // cols)
    fig, grid = plt.subplots(rows, cols, figsize=(5 * cols, 4 * rows), squeeze=False)
    axes = list(grid.flat)
    for ax in axes[n_panels:]:
        ax.set_visible(False)
    axes = axes[:n_panels]
    ax1, ax2 = axes[:2]
    for name, hist in histories.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        ax1.plot(ep, [h["loss"] for h in hist], marker="o", label=name)
        if name != "two_stage":
            ax2.plot(ep, [h["val"] for h in hist], marker="o", label=name)
        for ax, key in zip(axes[2:], extra, strict=False):
            pts = [(h["epoch"], h[key]) for h in hist if key in h]
            if pts:
                ax.plot(*zip(*pts, strict=True), marker="o", label=name)
    ax1.set(title="training loss", xlabel="epoch")
    ax2.set(title="validation Sharpe (one step from EW)", xlabel="epoch")
    for ax, key in zip(axes[2:], extra, strict=False):
        ax.set(title=EPOCH_PANELS[key], xlabel="epoch")
    for ax, key in zip(axes[2 + len(extra) :], split_keys, strict=True):
        _split_bars(ax, metrics, key)
    for ax in axes:
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def _has(metrics: dict, key: str) -> bool:
    return any(key in m for by_split in metrics.values() for m in by_split.values())


def _split_bars(ax, metrics: dict, key: str) -> None:
    """Grouped bars of ``key``: one group per model, one bar per split."""
    names = list(metrics)
    splits = ("val", "test")
    width = 0.8 / len(splits)
    x = np.arange(len(names))
    for j, split in enumerate(splits):
        vals = [metrics[n].get(split, {}).get(key, float("nan")) for n in names]
        ax.bar(x + (j - (len(splits) - 1) / 2) * width, vals, width, label=split)
    ax.set_xticks(x, names, rotation=30, ha="right", fontsize=8)
    ax.set(title=SPLIT_PANELS[key])


def _fmt(m: dict, key: str, spec: str) -> str:
    """``m[key]`` formatted, blank when absent (older results) or NaN."""
    v = m.get(key)
    return "" if v is None or v != v else format(v, spec)


def format_results(results: dict) -> str:
    """Validation/test table per model: Sharpe, max drawdown, turnover/yr, cost/yr; test
    effective names (1/HHI), starved share and the largest feasibility violation."""
    rows = {}
    for name, by_split in results["metrics"].items():
        row = {}
        for split in ("val", "test"):
            m = by_split[split]
            row[f"{split} Sharpe"] = f"{m['sharpe']:+.2f}"
            row[f"{split} max DD"] = _fmt(m, "max_drawdown", ".1%")
            row[f"{split} turnover/yr"] = f"{m['annual_turnover']:.2f}x"
            row[f"{split} cost/yr"] = f"{m['annual_cost']:.2%}"
        row["test names"] = _fmt(by_split["test"], "effective_names", ".1f")
        st = by_split["test"]["starved_share"]
        row["test starved"] = "" if st != st else f"{st:.0%}"
        row["max violation"] = f"{max(b['max_violation'] for b in by_split.values()):.1e}"
        rows[name] = row
    return pd.DataFrame(rows).T.to_string()
