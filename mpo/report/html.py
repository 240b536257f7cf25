"""A self-contained HTML report of a backtest run (one file, figures embedded).

``write_report(run, path)`` renders the metrics table (:mod:`mpo.report.tables`)
and the four figures of :mod:`mpo.report.figures`: equity curves, drawdowns,
weights over time (one panel per policy) and annual turnover and cost per
policy, one bar segment per cost term. The file has no external resources, so it opens
offline in any browser and can be mailed as is.
"""

from __future__ import annotations

import base64
import html
import io
import logging
from pathlib import Path
from typing import TYPE_CHECKING

from mpo.io import atomic_path, package_versions
from mpo.report.figures import report_figures
from mpo.report.tables import formatted_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from mpo.backtest import BacktestRun

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


def _png(fig: Figure) -> str:
    """``fig`` as base64 PNG text (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def render_report(run: BacktestRun, title: str = "mpo backtest", notes: str = "") -> str:
    """The report as an HTML string.

    Parameters
    ----------
    run
        The backtest to report.
    title
        The page's title and heading.
    notes
        A paragraph shown under the data description.

    Returns
    -------
    str
        A complete HTML document with the figures embedded as PNG data URIs.
    """
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
        for key, caption, data in ((k, c, _png(f)) for k, c, f in report_figures(run))
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
charged by the simulator, one column per cost term (e.g. half-spread, 1.5-power impact, holding),
and reported per year as a fraction of portfolio value.</p>
<h2>Figures</h2>
{figures}
</body></html>
"""


def write_report(run: BacktestRun, path: str | Path, **kwargs) -> Path:
    """Render the report and write it atomically to ``path``.

    Parameters
    ----------
    run
        The backtest to report.
    path
        The HTML file to write (its folder is created).
    **kwargs
        ``title`` and ``notes`` of :func:`render_report`.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    path = Path(path)
    text = render_report(run, **kwargs)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    logger.info("report written to %s", path)
    return path
