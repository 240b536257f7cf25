"""A self-contained HTML report of a backtest run (one file, figures embedded).

``write_report(run, path)`` renders the metrics table and four figures: equity
curves, drawdowns, weights over time (one panel per policy) and annual
turnover and cost per policy. The file has no external resources, so it opens
offline in any browser and can be mailed as is.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from mpo.backtest import BacktestRun
from mpo.io import atomic_path, package_versions

__all__ = ["render_report", "write_report"]

logger = logging.getLogger(__name__)

_CSS = """
body { font-family: -apple-system, Segoe UI, Helvetica, Arial, sans-serif; margin: 2em auto;
       max-width: 1200px; color: #222; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; margin-top: 1.6em; }
table.metrics { border-collapse: collapse; font-size: 0.85em; }
table.metrics th, table.metrics td { border-bottom: 1px solid #ddd; padding: 4px 8px;
       text-align: right; white-space: nowrap; }
table.metrics th:first-child, table.metrics td:first-child { text-align: left; }
.meta { color: #555; font-size: 0.9em; } figure { margin: 1em 0; }
figcaption { color: #555; font-size: 0.85em; } img { max-width: 100%; }
"""


def _png(fig) -> str:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(run: BacktestRun) -> list[tuple[str, str, str]]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    from matplotlib.ticker import PercentFormatter

    figs: list[tuple[str, str, str]] = []
    results = run.results

    fig, ax = plt.subplots(figsize=(10, 4.2))
    for name, r in results.items():
        growth = (1.0 + r.returns).cumprod()
        ax.plot(growth.index, growth.to_numpy(), label=name, lw=1.3)
    ax.set_ylabel("growth of 1 (net of costs)")
    ax.legend(fontsize=8, ncol=min(len(results), 4))
    ax.grid(alpha=0.3)
    figs.append(("equity", "Equity curves", _png(fig)))

    fig, ax = plt.subplots(figsize=(10, 3.2))
    for name, r in results.items():
        growth = (1.0 + r.returns).cumprod()
        dd = growth / np.maximum.accumulate(growth.clip(lower=0).to_numpy()) - 1.0
        ax.plot(dd.index, dd.to_numpy(), label=name, lw=1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.set_ylabel("drawdown")
    ax.legend(fontsize=8, ncol=min(len(results), 4))
    ax.grid(alpha=0.3)
    figs.append(("drawdowns", "Drawdowns", _png(fig)))

    names = list(results)
    fig, axes = plt.subplots(
        len(names), 1, figsize=(10, 2.2 * len(names)), sharex=True, squeeze=False
    )
    for ax, name in zip(axes[:, 0], names, strict=True):
        w = results[name].weights
        cols = list(w.columns)
        colors = plt.cm.tab20(np.arange(len(cols)) % 20)
        ax.stackplot(w.index, w.to_numpy().T.clip(min=0), labels=cols, colors=colors, lw=0)
        ax.set_ylim(0, max(1.0, float(w.clip(lower=0).sum(axis=1).max())))
        ax.set_ylabel(name, fontsize=8)
        ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    axes[0, 0].legend(fontsize=6, ncol=min(len(cols), 11), loc="upper left",
                      bbox_to_anchor=(0, 1.45))  # fmt: skip
    figs.append(("weights", "Weights over time (post-trade, cash included)", _png(fig)))

    table = run.table()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.4))
    x = np.arange(len(table))
    a1.bar(x, table.get("annual_turnover", pd.Series(0.0, index=table.index)).to_numpy())
    a1.set_xticks(x, table.index, rotation=30, ha="right", fontsize=8)
    a1.set_ylabel("turnover per year (x)")
    spread = table.get("spread_cost", pd.Series(0.0, index=table.index)).to_numpy()
    impact = table.get("impact_cost", pd.Series(0.0, index=table.index)).to_numpy()
    a2.bar(x, spread, label="spread")
    a2.bar(x, impact, bottom=spread, label="impact")
    a2.set_xticks(x, table.index, rotation=30, ha="right", fontsize=8)
    a2.yaxis.set_major_formatter(PercentFormatter(1.0))
    a2.set_ylabel("cost per year (of value)")
    a2.legend(fontsize=8)
    fig.tight_layout()
    figs.append(("costs", "Turnover and transaction costs", _png(fig)))
    return figs


def render_report(run: BacktestRun, title: str = "mpo backtest", notes: str = "") -> str:
    """The report as an HTML string."""
    from mpo.cli import formatted_table

    table = formatted_table(run.table()).to_html(
        classes="metrics", border=0, index_names=False, escape=True
    )
    d = run.market.describe()
    versions = package_versions()
    meta = (
        f"data {html.escape(str(d['name']))}: {len(d['tickers'])} assets "
        f"({html.escape(', '.join(map(str, d['tickers'][:30])))}"
        f"{', ...' if len(d['tickers']) > 30 else ''}), fingerprint {d['fingerprint']}<br>"
        f"backtest {run.start.date()} to {run.end.date()}; "
        f"{html.escape(run.market.volume_note)}<br>"
        f"seed {run.seed}; mpo {versions.get('mpo', '?')}, cvxportfolio "
        f"{versions.get('cvxportfolio', '?')}"
    )
    figures = "\n".join(
        f'<figure id="fig-{key}"><figcaption>{html.escape(caption)}</figcaption>'
        f'<img alt="{html.escape(caption)}" src="data:image/png;base64,{data}"></figure>'
        for key, caption, data in _figures(run)
    )
    notes_html = f'<p class="meta">{html.escape(notes)}</p>' if notes else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{meta}</p>
{notes_html}
<h2>Metrics</h2>
{table}
<p class="meta">Sharpe ratios of returns in excess of cash, annualised, with stationary-bootstrap
95% confidence intervals; dSharpe is the difference to Hold with a paired bootstrap CI. Costs are
charged by the simulator (half-spread + 1.5-power impact) and reported per year as a fraction of
portfolio value.</p>
<h2>Figures</h2>
{figures}
</body></html>
"""


def write_report(run: BacktestRun, path: str | Path, **kwargs) -> Path:
    """Render the report and write it atomically to ``path``."""
    path = Path(path)
    text = render_report(run, **kwargs)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    logger.info("report written to %s", path)
    return path
