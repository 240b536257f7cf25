"""The Streamlit script of ``mpo dashboard``: ``streamlit run mpo/dashboard/app.py -- RUNS_DIR``.

The sidebar picks a runs folder and one run folder in it; the page shows what
that kind of run recorded: a backtest's equity curves, drawdowns, weights and
costs of the chosen policies; a tuning run's history and parameter plots (from
its ``trials.csv``) and its test backtest; a training run's table and curves; a
walk-forward's per-fold table and stitched equity curves. Data come from
:mod:`mpo.dashboard.runs` and :mod:`mpo.dashboard.frames`; this script only
draws. A folder that cannot be shown is one message, never a traceback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import altair as alt
import pandas as pd
import streamlit as st

from mpo.dashboard import frames
from mpo.dashboard.runs import (
    BacktestView,
    RunFolder,
    RunFolderError,
    TrainView,
    TuneView,
    WalkForwardView,
    discover_runs,
    load_run,
    walkforward_series,
)
from mpo.report.tables import AGGREGATE_LAYOUT, WALKFORWARD_LAYOUT, formatted_table

#: The environment variable that names the runs folder when no argument is given.
ENV_RUNS_DIR = "MPO_RUNS_DIR"


def default_runs_dir() -> str:
    """``RUNS_DIR`` of ``streamlit run app.py -- RUNS_DIR``, else ``$MPO_RUNS_DIR``, else runs."""
    if len(sys.argv) > 1 and Path(sys.argv[0]).name == Path(__file__).name:
        return sys.argv[1]
    return os.environ.get(ENV_RUNS_DIR, "runs")


@st.cache_data(show_spinner=False, max_entries=32)
def _load(path: str, kind: str, label: str, modified: float):
    """The view of a run folder; cached until its marker file changes (``modified``)."""
    return load_run(RunFolder(Path(path), label, kind, modified=modified))


# ---------------------------------------------------------------------------- charts
def _chart(frame: pd.DataFrame, title: str, x: str, y: str, color: str | None = None, *,
           mark: str = "line", y_format: str | None = None, x_type: str = "T",
           log_x: bool = False, rules: list | None = None) -> None:  # fmt: skip
    """One Altair chart titled ``title`` (the title is how tests find it)."""
    enc = {
        "x": alt.X(f"{x}:{x_type}", title=None if x_type == "T" else x,
                   scale=alt.Scale(type="log") if log_x else alt.Undefined),
        "y": alt.Y(f"{y}:Q", title=y, axis=alt.Axis(format=y_format) if y_format else alt.Undefined,
                   scale=alt.Scale(zero=mark in ("area", "bar"))),  # lines: the data's range
        "tooltip": [c for c in (x, color, y) if c],
    }  # fmt: skip
    if color:
        enc["color"] = alt.Color(f"{color}:N", title=color)
    base = alt.Chart(frame, title=title)
    layer = getattr(base, f"mark_{mark}")(**({"point": False} if mark == "line" else {}))
    chart = layer.encode(**enc)
    if rules:
        marks = alt.Chart(pd.DataFrame({x: rules})).mark_rule(strokeDash=[4, 4], opacity=0.4)
        chart = chart + marks.encode(x=f"{x}:T")
    st.altair_chart(chart.properties(title=title).interactive())


def _scatter(frame: pd.DataFrame, title: str, x: str, y: str, colour: str) -> None:
    """Points at (``x``, ``y``) coloured by the number ``colour`` (log axes for wide ranges)."""

    def scale(column: str):
        v = frame[column]
        wide = len(v) and (v > 0).all() and v.max() / v.min() > 100
        return alt.Scale(type="log") if wide else alt.Undefined

    chart = alt.Chart(frame, title=title).mark_circle(size=60).encode(
        x=alt.X(f"{x}:Q", scale=scale(x)), y=alt.Y(f"{y}:Q", scale=scale(y)),
        color=alt.Color(f"{colour}:Q"), tooltip=list(frame.columns),
    )  # fmt: skip
    st.altair_chart(chart.interactive())


def _pick(label: str, options: list[str], key: str, default: list[str] | None = None) -> list[str]:
    chosen = st.multiselect(label, options, default=default or options, key=key)
    if not chosen:
        st.info(f"Choose at least one of: {', '.join(options)}.")
    return chosen


def _table(frame: pd.DataFrame, hide_index: bool = False) -> None:
    st.dataframe(frame, hide_index=hide_index)


# ---------------------------------------------------------------------------- backtests
def show_policies(series: dict, metrics: pd.DataFrame, key: str, rules: list | None = None) -> None:
    """Equity, drawdowns, weights and costs of the policies chosen in a multiselect."""
    chosen = _pick("Policies", list(series), key=f"policies@{key}")
    if not chosen:
        return
    st.caption(f"showing {', '.join(chosen)}")
    picked = {n: series[n] for n in chosen}
    tabs = st.tabs(["Equity", "Drawdowns", "Weights", "Costs", "Turnover"])
    with tabs[0]:
        growth = frames.long(frames.equity(picked), "policy", "growth of 1")
        _chart(growth, "Equity curves (growth of 1, net of costs)", "date", "growth of 1",
               "policy", rules=rules)  # fmt: skip
    with tabs[1]:
        dd = frames.long(frames.drawdowns(picked), "policy", "drawdown")
        _chart(dd, "Drawdowns from the running peak", "date", "drawdown", "policy",
               y_format="%", rules=rules)  # fmt: skip
    with tabs[2]:
        name = st.selectbox("Weights of", chosen, key=f"weights@{key}")
        if picked[name].weights.empty:
            st.info(f"{name} recorded no weights.parquet.")
        else:
            _chart(frames.weights(picked[name]), f"Post-trade weights: {name}", "date",
                   "weight", "asset", mark="area", y_format="%")  # fmt: skip
    with tabs[3]:
        rows = metrics.loc[[n for n in chosen if n in metrics.index]]
        costs = frames.annual_costs(rows)
        if len(costs):
            _chart(costs, "Yearly costs per term (fraction of value)", "policy", "cost", "term",
                   mark="bar", y_format="%", x_type="N")  # fmt: skip
        name = st.selectbox("Cumulative costs of", chosen, key=f"costs@{key}")
        if picked[name].costs.empty:
            st.info(f"{name} recorded no costs.parquet.")
        else:
            _chart(frames.cumulative_costs(picked[name]), f"Cumulative costs: {name} ($)",
                   "date", "dollars", "term")  # fmt: skip
    with tabs[4]:
        turnover = pd.DataFrame({n: s.returns["turnover"] for n, s in picked.items()})
        _chart(frames.long(turnover, "policy", "turnover"), "Turnover per period", "date",
               "turnover", "policy", y_format="%")  # fmt: skip


def _missing(missing: dict, failures: dict) -> None:
    for name, why in failures.items():
        st.error(f"{name} failed: {why}")
    for name, why in missing.items():
        st.warning(f"{name} left out: {why}")


def show_backtest(view: BacktestView, key: str) -> None:
    w = view.window
    st.caption(
        f"backtest {w.get('start', '?')} to {w.get('end', '?')} on {view.data.get('name', '?')} "
        f"({len(view.data.get('tickers') or [])} assets)"
    )
    st.subheader("Metrics")
    _table(formatted_table(view.metrics))
    _missing(view.missing, view.failures)
    show_policies(view.policies, view.metrics, key)


# ---------------------------------------------------------------------------- tuning
def show_tune(view: TuneView, key: str) -> None:
    s = view.summary
    dsr = (s.get("deflated_sharpe") or {}).get("dsr")
    cols = st.columns(4)
    cols[0].metric("trials finished", s.get("n_finished", len(view.trials)))
    cols[1].metric("failed", s.get("n_failed", 0))
    best = s.get("best_train_value")
    cols[2].metric(f"best {s.get('objective', 'value')}", "" if best is None else f"{best:+.3f}")
    cols[3].metric("deflated Sharpe ratio", "" if dsr is None else f"{dsr:.2f}")
    windows = s.get("windows") or {}
    st.caption(
        f"study {s.get('study', '?')!r}, train {windows.get('train')}, test "
        f"{windows.get('test')}; best trial {s.get('best_trial')}: {s.get('best_params')}"
    )
    history = frames.best_so_far(view.trials)
    if history.empty:
        st.warning("No trial completed: nothing to plot (see the trials table for the reasons).")
    else:
        st.subheader("Optimisation history")
        _chart(history.melt("number", var_name="series", value_name="objective"),
               "Trial values and best so far", "number", "objective", "series",
               mark="point", x_type="Q")  # fmt: skip
    if view.params:
        st.subheader("Parameters")
        param = st.selectbox("Parameter", view.params, key=f"param@{key}")
        points = frames.param_frame(view.trials, param)
        positive = bool(len(points)) and (points[param] > 0).all()
        span = points[param].max() / points[param].min() if positive else 1.0
        _chart(points, f"Objective against {param}", param, "value", "state", mark="point",
               x_type="Q", log_x=positive and span > 100)  # fmt: skip
        if len(view.params) > 1:
            other = st.selectbox("against", [p for p in view.params if p != param],
                                 key=f"param2@{key}")  # fmt: skip
            pair = frames.param_pair(view.trials, param, other)
            _scatter(pair, f"{param} and {other} (colour: objective)", param, other, "value")
    if {"annual_volatility", "annual_return"} <= set(view.trials.columns):
        cloud = view.trials[["number", "state", "annual_volatility", "annual_return"]].dropna()
        _chart(cloud, "Trials: training-window risk and return", "annual_volatility",
               "annual_return", "state", mark="point", x_type="Q", y_format="%")  # fmt: skip
    st.subheader("Trials")
    _table(view.trials, hide_index=True)
    for name, path in view.plots.items():
        with st.expander(f"{name}.png (written by mpo tune)"):
            st.image(str(path))
    st.subheader("Test window")
    if view.test is None:
        st.warning(view.test_problem)
    else:
        show_backtest(view.test, f"test@{key}")


# ---------------------------------------------------------------------------- training
def show_train(view: TrainView, key: str) -> None:
    r = view.results
    data = r.get("data") or {}
    st.caption(
        f"data {data.get('name', '?')} ({len(data.get('tickers') or [])} assets), seed "
        f"{r.get('seed')}, remedy {r.get('remedy')}; {r.get('volume_note') or ''}"
    )
    st.subheader("Validation and test")
    _table(frames.train_table(view.metrics))
    with st.expander("All metrics per model and split"):
        _table(view.metrics)
    if not view.splits.empty:
        _table(view.splits.rename_axis("split"))
    if view.history.empty:
        st.info("results.json holds no training history.")
    else:
        st.subheader("Training curves")
        models = _pick("Models", list(dict.fromkeys(view.history["model"])), f"models@{key}")
        rows = view.history[view.history["model"].isin(models)]
        for column, title in (("loss", "Training loss"), ("val", "Validation score")):
            if column in rows and rows[column].notna().any():
                _chart(rows[["epoch", "model", column]].dropna(), f"{title} per epoch",
                       "epoch", column, "model", x_type="Q")  # fmt: skip
    if view.curves is not None:
        with st.expander("curves.png (written by mpo train)"):
            st.image(str(view.curves))


# ---------------------------------------------------------------------------- walk-forward
def show_walkforward(view: WalkForwardView, key: str) -> None:
    cfg = view.summary.get("config") or {}
    st.caption(
        f"{len(view.windows)} folds, train {cfg.get('train', '?')}, test {cfg.get('test', '?')}, "
        f"purge {cfg.get('purge', '?')}; trials {(view.summary.get('trials') or {}).get('n')}"
    )
    universes = list(view.universes)
    universe = st.selectbox("Universe", universes, key=f"universe@{key}")
    info = view.universes[universe]
    st.subheader(f"Stitched out of sample: {universe}")
    _table(formatted_table(info["metrics"], WALKFORWARD_LAYOUT))
    if view.aggregate is not None:
        st.subheader(f"Across {len(universes)} universes")
        _table(formatted_table(view.aggregate, AGGREGATE_LAYOUT))
    for name, why in view.failures.items():
        st.error(f"{name} failed: {why}")
    st.subheader("Per fold")
    folds = (
        view.folds[view.folds["universe"] == universe] if "universe" in view.folds else view.folds
    )
    specs = _pick("Specs", list(dict.fromkeys(folds["spec"].astype(str))), f"specs@{key}")
    shown = folds[folds["spec"].astype(str).isin(specs)]
    _table(shown, hide_index=True)
    sharpes = frames.fold_sharpes(shown, universe)
    if len(sharpes):
        _chart(sharpes, "Test Sharpe per fold", "fold", "test_sharpe", "spec", mark="bar",
               x_type="O")  # fmt: skip
    params = [c.removeprefix("param_") for c in shown.columns if c.startswith("param_")]
    if params:
        param = st.selectbox("Parameter per fold", params, key=f"foldparam@{key}")
        chosen = shown[["fold", "spec", f"param_{param}"]].dropna()
        if len(chosen):
            _chart(chosen, f"Tuned {param} per fold", "fold", f"param_{param}", "spec",
                   mark="point", x_type="O")  # fmt: skip
    if not view.windows.empty:
        with st.expander("Fold windows"):
            _table(view.windows, hide_index=True)
    series, missing = walkforward_series(view, universe)
    _missing(missing, {})
    if series:
        starts = pd.to_datetime(view.windows.get("test_start", pd.Series(dtype=str))).tolist()
        show_policies(series, info["metrics"], f"{universe}@{key}", rules=starts[1:])


#: Kind -> the function that draws its view.
PAGES = {
    "backtest": show_backtest,
    "tune": show_tune,
    "train": show_train,
    "walkforward": show_walkforward,
}


# ---------------------------------------------------------------------------- the page
def _choose_run(runs: list[RunFolder]) -> RunFolder:
    kinds = list(dict.fromkeys(r.kind or "unreadable" for r in runs))
    shown = st.sidebar.multiselect("Kinds", kinds, default=kinds, key="kinds")
    runs = [r for r in runs if (r.kind or "unreadable") in shown] or runs
    titles = {r.title: r for r in runs}
    return titles[st.sidebar.selectbox("Run", list(titles), key="run")]


def main() -> None:
    """Draw the page (streamlit reruns this on every interaction)."""
    st.set_page_config(page_title="mpo dashboard", layout="wide")
    root = st.sidebar.text_input("Runs folder", value=default_runs_dir(), key="runs_dir")
    if st.sidebar.button("Reload", key="reload"):
        st.cache_data.clear()
    st.title("mpo dashboard")
    try:
        runs = discover_runs(root)
    except RunFolderError as exc:
        st.error(str(exc))
        return
    if not runs:
        st.info(
            f"No run folders in {root!r} yet. Make one, e.g. `mpo backtest policies/spo.toml "
            f"--out {root}` (or `mpo compare`, `mpo tune`, `mpo train`, `mpo walkforward`), "
            "then press Reload."
        )
        return
    run = _choose_run(runs)
    st.header(run.title)
    st.caption(str(run.path))
    if run.problem:
        st.error(run.problem)
        return
    try:
        view = _load(str(run.path), run.kind, run.label, run.modified)
    except RunFolderError as exc:
        st.error(f"{run.label} cannot be shown: {exc}")
        return
    PAGES[run.kind](view, run.label)


main()
