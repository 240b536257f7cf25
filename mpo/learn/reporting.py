"""The training run's table and curves (``mpo train`` prints and saves them)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

__all__ = ["format_results", "save_curves"]


def save_curves(histories: dict, target: Path) -> None:
    """PNG of training loss and validation score per epoch, one line per model."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpo.io import atomic_path

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in histories.items():
        if not hist:
            continue
        ep = [h["epoch"] for h in hist]
        ax1.plot(ep, [h["loss"] for h in hist], marker="o", label=name)
        if name != "two_stage":
            ax2.plot(ep, [h["val"] for h in hist], marker="o", label=name)
    ax1.set(title="training loss", xlabel="epoch")
    ax2.set(title="validation Sharpe (one step from EW)", xlabel="epoch")
    ax1.legend(fontsize=8)
    ax2.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def format_results(results: dict) -> str:
    """Validation/test table: Sharpe, turnover/yr, cost/yr, starved share per model."""
    rows = {}
    for name, by_split in results["metrics"].items():
        row = {}
        for split in ("val", "test"):
            m = by_split[split]
            row[f"{split} Sharpe"] = f"{m['sharpe']:+.2f}"
            row[f"{split} turnover/yr"] = f"{m['annual_turnover']:.2f}x"
            row[f"{split} cost/yr"] = f"{m['annual_cost']:.2%}"
        st = by_split["test"]["starved_share"]
        row["test starved"] = "" if st != st else f"{st:.0%}"
        row["max violation"] = f"{max(b['max_violation'] for b in by_split.values()):.1e}"
        rows[name] = row
    return pd.DataFrame(rows).T.to_string()
