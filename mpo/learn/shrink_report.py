"""Summary statistics, table and figure of the shrinkage study (reads its results only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

__all__ = ["delta_table", "format_summary", "save_figure", "save_study", "summarise"]

#: Methods the edges are measured against.
REFERENCES = ("plug_in", "ledoit_wolf")


def _test_sharpes(rows: list[dict]) -> pd.DataFrame:
    """Seeds x methods out-of-sample Sharpe ratios."""
    return pd.DataFrame(
        {r["seed"]: {m: v["test"]["sharpe"] for m, v in r["methods"].items()} for r in rows}
    ).T


def summarise(rows: list[dict]) -> dict:
    """Per method: mean, std and range of test Sharpe over seeds; edges and win rates.

    ``edge_vs_<ref>``: mean of the per-seed difference, its standard error
    (``std / sqrt(seeds)``) and the share of seeds where the method is higher.
    """
    sr = _test_sharpes(rows)
    out = {}
    for m in sr.columns:
        x = sr[m].to_numpy()
        s = {
            "mean": float(x.mean()),
            "std": float(x.std(ddof=1)) if len(x) > 1 else float("nan"),
            "min": float(x.min()),
            "max": float(x.max()),
        }
        for ref in REFERENCES:
            if ref == m or ref not in sr:
                continue
            diff = x - sr[ref].to_numpy()
            se = float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else float("nan")
            s[f"edge_vs_{ref}"] = {
                "mean": float(diff.mean()),
                "se": se,
                "win_rate": float((diff > 0).mean()),
                "wins": int((diff > 0).sum()),
            }
        out[m] = s
    return out


def format_summary(results: dict) -> str:
    """The out-of-sample table: mean +- std of Sharpe, range, edges and wins."""
    summary, n = results["summary"], len(results["seeds"])
    table = {}
    for m, s in summary.items():
        row = {
            "OOS Sharpe": f"{s['mean']:+.2f} +- {s['std']:.2f}",
            "min..max": f"{s['min']:+.2f}..{s['max']:+.2f}",
        }
        for ref in REFERENCES:
            e = s.get(f"edge_vs_{ref}")
            row[f"edge vs {ref}"] = "" if e is None else f"{e['mean']:+.2f} ({e['se']:.2f})"
            row[f"wins vs {ref}"] = "" if e is None else f"{e['wins']}/{n}"
        table[m] = row
    return pd.DataFrame(table).T.to_string()


def delta_table(results: dict) -> str:
    """Per seed: learned ``delta*``, mean Ledoit-Wolf intensity, test Sharpe by method."""
    rows = {}
    for r in results["per_seed"]:
        row = {"delta*": f"{r['delta_star']:.3f}", "LW delta": f"{r['lw_mean_train']:.3f}"}
        row |= {m: f"{v['test']['sharpe']:+.2f}" for m, v in r["methods"].items()}
        rows[r["seed"]] = row
    return pd.DataFrame(rows).T.rename_axis("seed").to_string()


def save_figure(results: dict, target: Path) -> None:
    """PNG: test Sharpe per seed and method; ``delta*`` against the Ledoit-Wolf intensity."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from mpo.io import atomic_path

    rows = results["per_seed"]
    sr = _test_sharpes(rows)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    x = np.arange(len(sr))
    for j, m in enumerate(sr.columns):
        ax1.plot(
            x + 0.08 * (j - (len(sr.columns) - 1) / 2),
            sr[m],
            "o",
            label=f"{m} (mean {sr[m].mean():+.2f})",
        )
        ax1.axhline(sr[m].mean(), color=f"C{j}", lw=0.8, ls="--")
    ax1.set(title="out-of-sample Sharpe by universe", xlabel="seed", ylabel="Sharpe (annual)")
    ax1.set_xticks(x, [str(s) for s in sr.index])
    ax1.legend(fontsize=8)
    lw = [r["lw_mean_train"] for r in rows]
    ds = [r["delta_star"] for r in rows]
    ax2.scatter(lw, ds)
    for r in rows:
        ax2.annotate(str(r["seed"]), (r["lw_mean_train"], r["delta_star"]), fontsize=8)
    ax2.plot([0, 1], [0, 1], color="grey", lw=0.8)
    ax2.set(
        title="learned delta* vs Ledoit-Wolf intensity", xlabel="mean LW intensity (train)",
        ylabel="decision-aware delta*", xlim=(0, 1), ylim=(0, 1),
    )  # fmt: skip
    fig.tight_layout()
    with atomic_path(target) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)


def save_study(results: dict, run_dir: Path) -> None:
    """``shrink.png``, ``per_seed.csv`` (test Sharpe and ``delta*`` per seed) and, last,
    ``results.json`` in ``run_dir`` (every file written atomically)."""
    from mpo.io import atomic_path, write_json

    run_dir = Path(run_dir)
    save_figure(results, run_dir / "shrink.png")
    table = _test_sharpes(results["per_seed"])
    table["delta_star"] = [r["delta_star"] for r in results["per_seed"]]
    table["lw_mean_train"] = [r["lw_mean_train"] for r in results["per_seed"]]
    with atomic_path(run_dir / "per_seed.csv") as tmp:
        table.rename_axis("seed").to_csv(tmp)
    write_json(results, run_dir / "results.json")
