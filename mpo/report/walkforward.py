"""A self-contained HTML report of a finished walk-forward run (one file, figures embedded).

``write_walkforward_report(run_dir)`` reads ``summary.json``, ``folds.csv`` and the
``returns.parquet`` files of a walk-forward run and writes ``run_dir/report.html``: metrics
tables, stitched out-of-sample equity curves with the fold boundaries, test Sharpe and tuned
parameters per fold, win rates across universes. Nothing outside ``run_dir`` is read;
missing pieces are reported, not raised.
"""

from __future__ import annotations

import html
import json
import logging
import math
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from mpo.errors import MpoError, SpecError
from mpo.io import atomic_path, inside, package_versions
from mpo.report.figures import _pyplot
from mpo.report.html import _CSS, _png
from mpo.report.tables import Interval, Value, formatted_table

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["render_walkforward_report", "write_walkforward_report"]

logger = logging.getLogger(__name__)

#: With more universes than this, only the first universe's table is shown (plus the aggregate).
MAX_TABLES = 3


def _num(value: Any, fmt: str) -> str:
    """``value`` formatted with ``fmt``; blank when it is missing, null or not finite."""
    try:
        value = float(value)
    except (TypeError, ValueError):
        return ""
    return format(value, fmt) if math.isfinite(value) else ""


#: Columns of a universe's table that :func:`formatted_table` does not know.
VS_EQUAL_WEIGHT = (
    Value("sharpe_vs_equal_weight", "dSharpe vs EW", partial(_num, fmt="+.2f")),
    Interval("sharpe_vs_equal_weight_ci", "dSharpe vs EW 95% CI"),
    Value("p_vs_equal_weight_holm", "p vs EW (Holm)", partial(_num, fmt=".3f")),
    Value("dsr", "DSR", partial(_num, fmt=".2f")),
    Value("n_trials", "trials", partial(_num, fmt=".0f")),
)

#: Columns of the aggregate table (one row per policy, across universes).
AGGREGATE = (
    Value("mean_sharpe", "mean Sharpe", partial(_num, fmt="+.2f")),
    Value("sd_sharpe", "sd Sharpe", partial(_num, fmt=".2f")),
    Value("win_rate_vs_equal_weight", "wins vs EW", partial(_num, fmt=".0%")),
    Value("win_rate_vs_hold", "wins vs Hold", partial(_num, fmt=".0%")),
    Value("mean_diff_vs_equal_weight", "mean dSharpe vs EW", partial(_num, fmt="+.2f")),
    Interval("mean_diff_vs_equal_weight_ci", "95% CI (EW)"),
    Value("mean_diff_vs_hold", "mean dSharpe vs Hold", partial(_num, fmt="+.2f")),
    Interval("mean_diff_vs_hold_ci", "95% CI (Hold)"),
)

FOLD_COLUMNS = ["universe", "spec", "fold", "test_sharpe"]


def _load_summary(run_dir: Path) -> dict:
    """``summary.json`` of ``run_dir``; :class:`MpoError` when it is not a finished walk-forward."""
    path = run_dir / "summary.json"
    try:
        summary = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        msg = "it has no summary.json (written last by the walk-forward: pass the run's folder)"
        raise MpoError(f"{str(run_dir)!r} is not a finished walk-forward run: {msg}.") from None
    except (OSError, ValueError) as exc:
        raise MpoError(f"cannot read {str(path)!r} of a walk-forward run: {exc}") from exc
    kind = summary.get("kind") if isinstance(summary, dict) else type(summary).__name__
    if kind != "walkforward" or not summary.get("universes"):
        msg = f"its summary.json has {kind=} (expected 'walkforward') or lists no universe"
        raise MpoError(f"{str(run_dir)!r} is not a finished walk-forward run: {msg}.")
    return summary


def _load_folds(run_dir: Path) -> pd.DataFrame:
    """``folds.csv``; an empty frame, with a warning, when it is missing or unreadable."""
    try:
        frame = pd.read_csv(run_dir / "folds.csv")
    except (OSError, ValueError) as exc:  # FileNotFoundError; pandas' EmptyDataError
        logger.warning("cannot read %s (%s): no per-fold figures", run_dir / "folds.csv", exc)
        frame = pd.DataFrame()
    if not set(FOLD_COLUMNS) <= set(frame.columns):
        return pd.DataFrame(columns=FOLD_COLUMNS)
    return frame.assign(universe=frame["universe"].astype(str), spec=frame["spec"].astype(str))


def _read_returns(run_dir: Path, folder: str, policy: str, read: bool) -> tuple:
    """``(net returns or None, why the policy is left out or None)`` from
    ``run_dir/folder/policy/returns.parquet``; only checked when not ``read``."""
    try:
        if not policy or Path(policy).name != policy or policy in (".", ".."):
            raise SpecError(f"{policy=} is not one path component")
        path = inside(run_dir / folder / policy / "returns.parquet", run_dir)  # links resolved
    except SpecError:
        return None, "it names no folder inside the run folder"
    if not path.is_file():
        return None, "returns.parquet is missing"
    try:
        return (pd.read_parquet(path)["net_return"].astype(float) if read else None), None
    except (OSError, ValueError, KeyError) as exc:  # pyarrow's errors are ValueErrors
        return None, f"returns.parquet cannot be read ({exc!r})"


def _returns(run_dir: Path, universe: str, info: dict, read: bool) -> tuple[dict, list[str]]:
    """Net returns per policy of one universe (when ``read``) and a sentence per policy left out."""
    out, missing = {}, []
    for policy in info.get("policies") or {}:
        series, why = _read_returns(run_dir, str(info.get("path", ".")), str(policy), read)
        if why:
            logger.warning("universe %s, policy %s left out: %s", universe, policy, why)
            missing.append(f"{policy} in {universe}: {why}")
        elif read:
            out[policy] = series
    return out, missing


def equity_figure(returns: dict[str, pd.Series], boundaries: list[pd.Timestamp]) -> Figure:
    """Growth of 1 of the stitched test returns per policy; dashed lines at each test start."""
    fig, ax = _pyplot().subplots(figsize=(10, 4.2))
    for name, r in returns.items():
        ax.plot(r.index, (1.0 + r.fillna(0.0)).cumprod().to_numpy(), label=name, lw=1.3)
    for x in boundaries:
        ax.axvline(x, color="grey", ls="--", lw=0.8, alpha=0.7)
    ax.set_ylabel("growth of 1 (net of costs)")
    ax.legend(fontsize=8, ncol=min(len(returns), 4))
    ax.grid(alpha=0.3)
    return fig


def _bars(ax, table: pd.DataFrame, labels: list[str]) -> None:
    """One bar group per row of ``table``, one bar per column, with a legend."""
    x, n = np.arange(len(table)), max(len(table.columns), 1)
    for i, column in enumerate(table.columns):
        values = table[column].to_numpy(dtype=float)
        ax.bar(x + (i - (n - 1) / 2) * 0.8 / n, values, 0.8 / n, label=str(column))
    ax.set_xticks(x, labels, fontsize=8)
    ax.legend(fontsize=8, ncol=min(n, 4))
    ax.grid(alpha=0.3, axis="y")


def fold_sharpe_figure(frame: pd.DataFrame, folds: list[dict]) -> Figure:
    """Test Sharpe per fold, one bar per spec in each fold's group (mean over universes)."""
    labels = {int(f["fold"]): f"{f['fold']}\n{str(f.get('test_start', ''))[:4]}" for f in folds}
    frame = frame.assign(test_sharpe=pd.to_numeric(frame["test_sharpe"], errors="coerce"))
    table = frame.pivot_table(
        values="test_sharpe", index="fold", columns="spec", sort=False, dropna=False
    ).sort_index()
    fig, ax = _pyplot().subplots(figsize=(10, 3.6))
    _bars(ax, table, [labels.get(int(f), str(f)) for f in table.index])
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xlabel("fold / test year")
    ax.set_ylabel("test Sharpe")
    return fig


def param_columns(frame: pd.DataFrame) -> list[str]:
    """The ``param_<name>`` columns of ``frame`` holding at least one finite number."""
    columns = [c for c in frame.columns if str(c).startswith("param_")]
    values = frame[columns].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=float)
    return [str(c) for c, ok in zip(columns, np.isfinite(values).any(axis=0), strict=True) if ok]


def params_figure(frame: pd.DataFrame, columns: list[str]) -> Figure:
    """The chosen value of each parameter per fold, one panel per parameter, one line per spec."""
    n = len(columns)
    fig, axes = _pyplot().subplots(n, 1, figsize=(10, 2.4 * n), sharex=True, squeeze=False)
    for ax, column in zip(axes[:, 0], columns, strict=True):
        values = pd.to_numeric(frame[column], errors="coerce").astype(float)
        chosen = frame.assign(_v=values)[np.isfinite(values)].sort_values("fold")
        for spec, rows in chosen.groupby("spec", sort=False):
            ax.plot(rows["fold"], rows["_v"], marker="o", lw=1.2, label=spec)
        if (chosen["_v"] > 0).all() and chosen["_v"].max() > 10 * chosen["_v"].min():
            ax.set_yscale("log")
        ax.set_ylabel(column.removeprefix("param_"), fontsize=8)
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("fold")
    axes[-1, 0].xaxis.get_major_locator().set_params(integer=True)
    return fig


def win_rate_figure(aggregate: pd.DataFrame) -> Figure:
    """Share of universes in which each policy beat equal weight, and Hold, in Sharpe."""
    columns = {f"win_rate_vs_{c}": f"vs {c}" for c in ("equal_weight", "hold")}
    table = aggregate.reindex(columns=list(columns)).rename(columns=columns)
    fig, ax = _pyplot().subplots(figsize=(10, 3.4))
    _bars(ax, table, [str(p) for p in table.index])
    ax.axhline(0.5, color="grey", ls="--", lw=0.8)
    ax.set_ylim(0, 1)
    ax.set_ylabel("win rate (share of universes)")
    return fig


def _frame(rows: dict) -> pd.DataFrame:
    """Per-policy metric dicts as a numeric frame, one row per policy (``None`` becomes NaN)."""
    table = pd.DataFrame.from_dict({str(k): v or {} for k, v in rows.items()}, orient="index")
    return table.apply(pd.to_numeric, errors="coerce").astype(float)


def _table(rows: dict, columns: tuple, backtest: bool) -> str:
    """Per-policy metrics as an HTML table: ``columns``, after those of
    :func:`formatted_table` when ``backtest``."""
    table = _frame(rows)
    shown = formatted_table(table) if backtest else pd.DataFrame(index=table.index)
    for column in columns:
        for header, cells in column.cells(table):
            shown[header] = cells
    return shown.to_html(classes="metrics", border=0, index_names=False, escape=True)


def _excludes_zero(row: dict, stem: str) -> str | None:
    """``"+0.30 [+0.10, +0.50]"`` when the 95% CI of ``stem`` excludes zero, else ``None``."""
    low, high = (_num(row.get(f"{stem}_ci_{side}"), "+.2f") for side in ("low", "high"))
    if not low or not high or float(low) <= 0.0 <= float(high):
        return None
    return f"{_num(row.get(stem), '+.2f')} [{low}, {high}]"


def _notes(universes: dict, aggregate: dict | None) -> str:
    """Which policies' Sharpe differs from equal weight's with a 95% CI excluding zero."""
    hits: dict[str, list[str]] = {}
    for info in universes.values():
        for policy, row in ((info or {}).get("policies") or {}).items():
            if text := _excludes_zero(row or {}, "sharpe_vs_equal_weight"):
                hits.setdefault(str(policy), []).append(text)
    n = len(universes)
    found = "; ".join(f"{p} ({t[0]})" if n == 1 else f"{p} in {len(t)} of {n} universes"
                      for p, t in hits.items())  # fmt: skip
    text = (
        "The paired Sharpe difference to equal weight (out-of-sample test periods only) has a "
        f"95% confidence interval excluding zero for: {found or 'none of them'}."
    )
    if aggregate:
        rows = (aggregate.get("policies") or {}).items()
        stem = "mean_diff_vs_equal_weight"
        agg = [f"{p} ({t})" for p, r in rows if (t := _excludes_zero(r or {}, stem))]
        text += (
            " Across universes, the mean difference has a 95% CI excluding zero for: "
            f"{'; '.join(agg) or 'none of them'}."
        )
    return text + (
        " Each interval is for one comparison; the Holm p-value adjusts for the policies compared"
        " together, and the DSR deflates each Sharpe ratio for the number of tuning trials."
    )


def _figure(key: str, caption: str, fig: Figure) -> str:
    c, src = html.escape(caption), f"data:image/png;base64,{_png(fig)}"
    return (
        f'<figure id="fig-{key}"><figcaption>{c}</figcaption><img alt="{c}" src="{src}"></figure>'
    )


def _sentence(text: str) -> str:
    return f'<p class="meta">{html.escape(text)}</p>'


def _meta(summary: dict, run_dir: Path) -> str:
    """The meta line: folds, test span, universes, dates and versions (HTML-escaped)."""
    folds = summary.get("folds") or []
    span = f"{folds[0].get('test_start')} to {folds[-1].get('test_end')}" if folds else "none"
    ran = summary.get("versions")  # the run's; else this environment's
    versions = ran if isinstance(ran, dict) else package_versions()
    v = ", ".join(f"{k} {versions.get(k, '?')}" for k in ("mpo", "cvxportfolio", "cvxpy"))
    created = f"run created {summary['created']}; " if summary.get("created") else ""
    now = pd.Timestamp.now().isoformat(timespec="seconds")
    return html.escape(
        f"{len(folds)} folds, test periods {span}; {len(summary['universes'])} universe(s); "
        f"folder {run_dir.name}; {created}report created {now}; "
        f"{'run' if versions is ran else 'report made'} with {v}"
    )


def _figures(run_dir: Path, summary: dict, first: dict, missing: list[str]) -> list[str]:
    """The figures' HTML, and a sentence where a figure or a policy is left out."""
    names = [str(n) for n in summary["universes"]]
    folds = summary.get("folds") or []
    many = len(names) > 1
    where = f"first universe ({names[0]}) of {len(names)}" if many else names[0]
    out = []
    if first:
        starts = [pd.Timestamp(f["test_start"]) for f in folds if f.get("test_start")]
        caption = f"Stitched out-of-sample equity curves, {where}; dashed lines: fold test starts"
        out.append(_figure("equity", caption, equity_figure(first, starts)))
    else:
        out.append(_sentence("No returns.parquet could be read: no equity curves."))
    frame = _load_folds(run_dir)
    rows = frame[frame["universe"] == names[0]]  # the first universe's
    if not (frame if many else rows).empty:
        caption = f"Test Sharpe per fold ({'mean over universes' if many else names[0]})"
        out.append(_figure("folds", caption, fold_sharpe_figure(frame if many else rows, folds)))
    else:
        out.append(_sentence("folds.csv is empty or missing: no per-fold figure."))
    if params := param_columns(rows):
        caption = f"Parameter chosen per fold, {where} (log axis where values span > 10x)"
        out.append(_figure("params", caption, params_figure(rows, params)))
    else:
        out.append(_sentence("No spec was tuned or trained: no parameter-stability figure."))
    if aggregate := (summary.get("aggregate") or {}).get("policies"):
        fig = win_rate_figure(_frame(aggregate))
        out.append(_figure("wins", f"Win rates in Sharpe across {len(names)} universes", fig))
    if missing:
        out.append(_sentence("Left out (logged as warnings): " + "; ".join(missing) + "."))
    if failed := [f"{k}: {v}" for k, v in (summary.get("failures") or {}).items()]:
        out.append(_sentence("Tasks that failed in the run: " + "; ".join(failed) + "."))
    return out


def _tables(summary: dict) -> list[str]:
    """The metrics tables' HTML: each universe's (the first only when many) and the aggregate."""
    universes = summary["universes"]
    shown = list(universes)[: 1 if len(universes) > MAX_TABLES else None]
    out = []
    for name in shown:
        info = universes[name] or {}
        tickers = [str(t) for t in info.get("tickers") or []]
        listed = ", ".join(tickers[:30]) + (", ..." if len(tickers) > 30 else "")
        out.append(f"<h3>{html.escape(str(name))}</h3>")
        out.append(_sentence(f"{len(tickers)} assets: {listed}"))
        out.append(_table(info.get("policies") or {}, VS_EQUAL_WEIGHT, backtest=True))
    if len(shown) < len(universes):
        shown_all = f"only the first of {len(universes)} universes; the aggregate covers all."
        out.append(_sentence(f"Tables: {shown_all}"))
    aggregate = summary.get("aggregate") or {}
    if aggregate.get("policies"):
        n = aggregate.get("n_universes", len(universes))
        out.append(f"<h3>Across {html.escape(str(n))} universes</h3>")
        out.append(_table(aggregate["policies"], AGGREGATE, backtest=False))
    return out


def render_walkforward_report(run_dir: str | Path, title: str | None = None) -> str:
    """The walk-forward report of ``run_dir`` as an HTML string.

    Parameters
    ----------
    run_dir
        A finished walk-forward run folder (``summary.json``, ``folds.csv``,
        one ``returns.parquet`` per universe and policy); nothing outside it is read.
    title
        The page's title and heading; default ``"mpo walk-forward: <folder name>"``.

    Returns
    -------
    str
        A complete HTML document, figures embedded as PNG data URIs. Raises
        :class:`~mpo.errors.MpoError` when ``run_dir`` has no ``summary.json`` of a walk-forward.
    """
    run_dir = Path(run_dir)
    summary = _load_summary(run_dir)
    title = title or f"mpo walk-forward: {run_dir.name}"
    universes = enumerate(summary["universes"].items())
    read = [_returns(run_dir, str(n), info or {}, read=k == 0) for k, (n, info) in universes]
    first, missing = read[0][0], [sentence for _, lost in read for sentence in lost]
    config = html.escape(json.dumps(summary.get("config"), indent=2, default=str))
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style></head>
<body>
<h1>{html.escape(title)}</h1>
<p class="meta">{_meta(summary, run_dir)}</p>
{_sentence(_notes(summary["universes"], summary.get("aggregate")))}
<h2>Metrics</h2>
{"".join(_tables(summary))}
<p class="meta">Metrics of the stitched out-of-sample test periods. Sharpe ratios of returns in
excess of cash, annualised, with bootstrap 95% confidence intervals; dSharpe is the paired
difference to Hold or to equal weight (EW); costs per year as a fraction of portfolio value.</p>
<h2>Figures</h2>
{"".join(_figures(run_dir, summary, first, missing))}
<details><summary>Run configuration</summary><pre>{config}</pre></details>
</body></html>
"""


def write_walkforward_report(run_dir: str | Path, *, title: str | None = None) -> Path:
    """Render the report of ``run_dir`` (:func:`render_walkforward_report`) and write it
    atomically to ``run_dir/report.html``; returns that path."""
    path = Path(run_dir) / "report.html"
    text = render_walkforward_report(run_dir, title=title)
    with atomic_path(path) as tmp:
        Path(tmp).write_text(text, encoding="utf-8")
    logger.info("walk-forward report written to %s", path)
    return path
