"""Run folders of every kind, found under a folder and read into plain pandas objects.

A run folder is recognised by the file its command writes last (the mark of a
finished run):

========== ================ ====================================================
kind       marker           written by
========== ================ ====================================================
walkforward ``summary.json`` ``mpo walkforward`` (``kind = "walkforward"``)
tune       ``tuning.json``  ``mpo tune`` (its test backtest is in ``test/``)
train      ``results.json`` ``mpo train``
backtest   ``run.json``     ``mpo backtest`` and ``mpo compare``
========== ================ ====================================================

A folder with none of them is listed with the reason it cannot be shown (an
interrupted run, an empty folder); nothing here raises on a broken run except
the loaders, which raise :class:`RunFolderError` naming the file and the fix.
Nothing imports streamlit: the app (:mod:`mpo.dashboard.app`) draws what these
functions return.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from mpo.dashboard.errors import RunFolderError

__all__ = [
    "KINDS",
    "BacktestView",
    "PolicySeries",
    "RunFolder",
    "RunFolderError",
    "TrainView",
    "TuneView",
    "WalkForwardView",
    "discover_runs",
    "load_backtest",
    "load_run",
    "load_train",
    "load_tune",
    "load_walkforward",
    "read_policy",
    "walkforward_series",
]

logger = logging.getLogger(__name__)

#: Kind -> the file its command writes last (checked in this order).
MARKERS: dict[str, str] = {
    "walkforward": "summary.json",
    "tune": "tuning.json",
    "train": "results.json",
    "backtest": "run.json",
}
KINDS = tuple(MARKERS)

#: Files an unfinished run leaves behind -> what to say about it.
UNFINISHED: tuple[tuple[str, str], ...] = (
    ("config.json", "an unfinished walk-forward (config.json but no summary.json, written "
                    "last): rerun the same `mpo walkforward` command to finish it"),
    ("*-progress.pt", "an unfinished training run (no results.json, written last): rerun the "
                      "same `mpo train` command, or `mpo train SPEC --run-dir {path}`"),
    ("trials.csv", "an unfinished tuning run (no tuning.json, written last): rerun the same "
                   "`mpo tune` command, which resumes the study"),
    ("*/returns.parquet", "an unfinished backtest (policy series but no run.json, written "
                          "last): still running, or interrupted; rerun the same command"),
)  # fmt: skip

#: The series files of one policy (the layout of :func:`mpo.backtest.save_result`).
SERIES_FILES = ("returns", "weights", "trades", "costs")
RETURN_COLUMNS = ("net_return", "gross_return", "cash_return", "value", "turnover")


@dataclass(frozen=True)
class RunFolder:
    """One folder found under the runs folder: its kind, or why it cannot be shown."""

    path: Path
    label: str
    kind: str | None
    problem: str | None = None
    modified: float = 0.0

    @property
    def title(self) -> str:
        """``"tune · 20261203-101500-tune-spo"`` (``"?"`` for a folder that cannot be shown)."""
        return f"{self.kind or '?'} · {self.label}"


# ---------------------------------------------------------------------------- discovery
def _kind(path: Path) -> str | None:
    for kind, marker in MARKERS.items():
        if (path / marker).is_file():
            if kind == "walkforward" and not _is_walkforward_summary(path / marker):
                continue
            return kind
    return None


def _is_walkforward_summary(path: Path) -> bool:
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("kind") == "walkforward"
    except (OSError, ValueError, AttributeError):
        return True  # shown as a walk-forward whose summary.json is broken (the loader says so)


def _unfinished(path: Path) -> str | None:
    for pattern, message in UNFINISHED:
        if any(path.glob(pattern)):
            return f"{str(path)!r} is {message.format(path=path)}."
    return None


def _problem(path: Path) -> str:
    return _unfinished(path) or (
        f"{str(path)!r} holds none of {', '.join(MARKERS.values())} (the file each mpo command "
        "writes last): an empty, interrupted or foreign folder. Rerun the command that made "
        "it, or remove the folder."
    )


def _children(path: Path) -> list[Path]:
    try:
        return sorted(
            p for p in path.iterdir() if p.is_dir() and not p.name.startswith((".", "__"))
        )
    except OSError as exc:
        logger.warning("cannot list %s: %s", path, exc)
        return []


def _visit(path: Path, root: Path, depth: int, out: list[RunFolder]) -> bool:
    """Append the runs at or below ``path`` to ``out``; whether any (or a problem) was found."""
    label = str(path.relative_to(root)) if path != root else path.name or str(path)
    kind = _kind(path)
    if kind is not None:
        mtime = (path / MARKERS[kind]).stat().st_mtime
        out.append(RunFolder(path, label, kind, modified=mtime))
        return True
    if path != root and (problem := _unfinished(path)):  # its subfolders are parts of it
        out.append(RunFolder(path, label, None, problem, path.stat().st_mtime))
        return True
    found = False
    if depth > 0:
        for child in _children(path):
            found |= _visit(child, root, depth - 1, out)
    if not found and path != root:
        out.append(RunFolder(path, label, None, _problem(path), path.stat().st_mtime))
        return True
    return found


def discover_runs(root: str | Path, depth: int = 3) -> list[RunFolder]:
    """The run folders at or below ``root`` (``depth`` levels), newest first.

    ``root`` may be a folder of runs (``runs/``) or one run folder. A folder
    below it that holds no run is listed with a ``problem`` saying why, so that
    an interrupted run shows up instead of vanishing; a run folder's own
    subfolders (a tuning run's ``test/``, a walk-forward's ``tasks/``) are part
    of it and not listed.

    Raises
    ------
    RunFolderError
        When ``root`` does not exist or is not a folder.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise RunFolderError(
            f"the runs folder {str(root)!r} does not exist: pass the folder your runs were "
            "written to (`--out` of mpo backtest/compare/tune/train; default runs/)."
        )
    if not root.is_dir():
        raise RunFolderError(f"{str(root)!r} is a file: pass the folder that holds run folders.")
    out: list[RunFolder] = []
    _visit(root, root, depth, out)
    return sorted(out, key=lambda r: (r.kind is None, -r.modified, r.label))


# ---------------------------------------------------------------------------- reading
def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RunFolderError(f"{what}: {str(path)!r} is missing.") from None
    except (OSError, ValueError) as exc:
        raise RunFolderError(
            f"{what}: {str(path)!r} cannot be read ({exc}); it was cut short or edited by "
            "hand. Rerun the command that wrote it."
        ) from exc
    if not isinstance(data, dict):
        raise RunFolderError(f"{what}: {str(path)!r} holds a {type(data).__name__}, not an object.")
    return data


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except FileNotFoundError:
        raise RunFolderError(f"{what}: {str(path)!r} is missing.") from None
    except (OSError, ValueError) as exc:  # pandas' EmptyDataError, ParserError
        raise RunFolderError(f"{what}: {str(path)!r} cannot be read ({exc}).") from exc


def _read_parquet(path: Path) -> pd.DataFrame:
    try:
        return pd.read_parquet(path)
    except FileNotFoundError:
        raise RunFolderError(f"{str(path)!r} is missing.") from None
    except (OSError, ValueError) as exc:  # pyarrow's errors are ValueErrors or OSErrors
        raise RunFolderError(f"{str(path)!r} cannot be read ({exc}).") from exc


def _metrics_frame(rows: Any, where: Path) -> pd.DataFrame:
    """``{name: {metric: value}}`` -> one row per name (in the file's order)."""
    if not isinstance(rows, dict) or not all(isinstance(v, dict) for v in rows.values()):
        raise RunFolderError(f"{str(where)!r}: the metrics are not a table of policies.")
    frame = pd.DataFrame.from_dict(rows, orient="index")
    return frame.apply(pd.to_numeric, errors="coerce") if len(frame) else frame


@dataclass
class PolicySeries:
    """One policy's series as :func:`mpo.backtest.save_result` writes them (costs in dollars)."""

    name: str
    returns: pd.DataFrame  # net_return, gross_return, cash_return, value, turnover
    weights: pd.DataFrame  # post-trade weights, one column per asset and cash
    trades: pd.DataFrame
    costs: pd.DataFrame  # dollars per cost term


def read_policy(folder: str | Path, name: str | None = None) -> PolicySeries:
    """The series in ``folder`` (``returns.parquet``, ``weights``, ``trades``, ``costs``).

    Only ``returns.parquet`` is required; a missing ``weights``, ``trades`` or
    ``costs`` file is an empty frame (the page says so).

    Raises
    ------
    RunFolderError
        When a file is unreadable, ``returns.parquet`` is missing or lacks a column.
    """
    folder = Path(folder)
    frames = {
        f: _read_parquet(folder / f"{f}.parquet")
        if f == "returns" or (folder / f"{f}.parquet").exists()
        else pd.DataFrame()
        for f in SERIES_FILES
    }
    missing = [c for c in RETURN_COLUMNS if c not in frames["returns"].columns]
    if missing:
        raise RunFolderError(f"{str(folder / 'returns.parquet')!r} has no column {missing}.")
    return PolicySeries(name or folder.name, **frames)


def _read_policies(base: Path, names: list[str]) -> tuple[dict[str, PolicySeries], dict]:
    """Series per policy under ``base``; the ones that cannot be read -> why (logged)."""
    series, missing = {}, {}
    for name in names:
        folder = base / name
        if Path(name).name != name or name in (".", "..") or not folder.is_dir():
            missing[name] = f"no folder {str(folder)!r}"
            continue
        try:
            series[name] = read_policy(folder, name)
        except RunFolderError as exc:
            missing[name] = str(exc)
    for name, why in missing.items():
        logger.warning("policy %s left out: %s", name, why)
    return series, missing


@dataclass
class BacktestView:
    """A backtest or compare run: the metrics table and each policy's series."""

    path: Path
    metrics: pd.DataFrame  # one row per policy (Hold first), metric columns
    policies: dict[str, PolicySeries]
    window: dict
    data: dict
    failures: dict  # failed policies -> reason (the backtest's own record)
    missing: dict = field(default_factory=dict)  # policies whose series cannot be read -> why


def load_backtest(path: str | Path) -> BacktestView:
    """Read a backtest run folder (``run.json`` and ``<policy>/*.parquet``)."""
    path = Path(path)
    meta = _read_json(path / "run.json", "a backtest run")
    metrics = _metrics_frame(meta.get("metrics", {}), path / "run.json")
    policies, missing = _read_policies(path, [str(n) for n in metrics.index])
    if not policies:
        why = "; ".join(f"{k}: {v}" for k, v in missing.items()) or "run.json lists no policy"
        raise RunFolderError(f"the backtest run {str(path)!r} has no readable policy ({why}).")
    return BacktestView(
        path, metrics, policies, meta.get("window") or {}, meta.get("data") or {},
        meta.get("failures") or {}, missing,
    )  # fmt: skip


@dataclass
class TuneView:
    """A tuning run: the summary, one row per trial, the test-window backtest, the plots."""

    path: Path
    summary: dict
    trials: pd.DataFrame  # number, state, value, param_<name>..., user attributes
    test: BacktestView | None
    test_problem: str | None
    plots: dict[str, Path]

    @property
    def params(self) -> list[str]:
        """The tuned parameters (``trials.csv``'s ``param_<name>`` columns, without the prefix)."""
        return [c.removeprefix("param_") for c in self.trials.columns if c.startswith("param_")]


def load_tune(path: str | Path) -> TuneView:
    """Read a tuning run folder (``tuning.json``, ``trials.csv``, ``test/``, ``*.png``)."""
    path = Path(path)
    summary = _read_json(path / "tuning.json", "a tuning run")
    trials = _read_csv(path / "trials.csv", "a tuning run")
    if not {"number", "state", "value"} <= set(trials.columns):
        raise RunFolderError(f"{str(path / 'trials.csv')!r} lacks number, state or value.")
    test, problem = None, None
    if (path / "test").is_dir():
        try:
            test = load_backtest(path / "test")
        except RunFolderError as exc:
            problem = str(exc)
    else:
        problem = "this tuning run has no test-window backtest (test/ is absent)."
    plots = {p.stem: p for p in sorted(path.glob("*.png"))}
    return TuneView(path, summary, trials.sort_values("number"), test, problem, plots)


@dataclass
class TrainView:
    """A training run: per model and split the metrics, per model the training history."""

    path: Path
    results: dict
    metrics: pd.DataFrame  # index (model, split), metric columns
    history: pd.DataFrame  # model, epoch, loss, val, ... (long format)
    splits: pd.DataFrame  # one row per split: samples, start, end
    curves: Path | None


def load_train(path: str | Path) -> TrainView:
    """Read a training run folder (``results.json``, ``curves.png``)."""
    path = Path(path)
    results = _read_json(path / "results.json", "a training run")
    by_model = results.get("metrics")
    if not isinstance(by_model, dict) or not by_model:
        raise RunFolderError(f"{str(path / 'results.json')!r} holds no metrics per model.")
    rows = {
        (model, split): m
        for model, splits in by_model.items()
        for split, m in (splits or {}).items()
        if isinstance(m, dict)
    }
    metrics = pd.DataFrame.from_dict(rows, orient="index")
    metrics.index = pd.MultiIndex.from_tuples(metrics.index, names=["model", "split"])
    history = pd.DataFrame(
        [
            {"model": model, **row}
            for model, rows_ in (results.get("history") or {}).items()
            for row in rows_ or []
            if isinstance(row, dict)
        ]
    )
    splits = pd.DataFrame.from_dict(results.get("splits") or {}, orient="index")
    curves = path / "curves.png"
    return TrainView(path, results, metrics, history, splits, curves if curves.is_file() else None)


@dataclass
class WalkForwardView:
    """A walk-forward run: the per-fold table, the fold windows, per universe the metrics."""

    path: Path
    summary: dict
    folds: pd.DataFrame  # folds.csv: one row per universe, spec and fold
    windows: pd.DataFrame  # one row per fold: train and test windows
    universes: dict[str, dict]  # name -> {"path", "tickers", "metrics" (DataFrame)}
    aggregate: pd.DataFrame | None  # pooled across universes (several universes only)
    failures: dict


def load_walkforward(path: str | Path) -> WalkForwardView:
    """Read a walk-forward run folder (``summary.json``, ``folds.csv``)."""
    path = Path(path)
    summary = _read_json(path / "summary.json", "a walk-forward run")
    raw = summary.get("universes")
    if not isinstance(raw, dict) or not raw:
        raise RunFolderError(f"{str(path / 'summary.json')!r} lists no universe.")
    universes = {
        str(u): {
            "path": str(info.get("path", ".")),
            "tickers": list(info.get("tickers") or []),
            "metrics": _metrics_frame(info.get("policies") or {}, path / "summary.json"),
        }
        for u, info in raw.items()
    }
    folds = _read_csv(path / "folds.csv", "a walk-forward run")
    if "universe" in folds.columns:
        folds["universe"] = folds["universe"].astype(str)
    windows = pd.DataFrame(summary.get("folds") or [])
    agg = summary.get("aggregate")  # {"policies": {name: metrics}, "n_universes": K} or null
    aggregate = None
    if isinstance(agg, dict) and agg.get("policies"):
        aggregate = _metrics_frame(agg["policies"], path / "summary.json")
        if "n_universes" not in aggregate:
            aggregate.insert(0, "n_universes", agg.get("n_universes", len(universes)))
    failures = summary.get("failures") or {}
    return WalkForwardView(path, summary, folds, windows, universes, aggregate, failures)


def walkforward_series(view: WalkForwardView, universe: str) -> tuple[dict, dict]:
    """The stitched series per policy of ``universe`` and the policies left out -> why."""
    info = view.universes[universe]
    base = (view.path / info["path"]).resolve()
    if not base.is_relative_to(view.path.resolve()):
        names = list(info["metrics"].index)
        return {}, {n: f"{info['path']!r} lies outside the run folder" for n in names}
    return _read_policies(base, [str(n) for n in info["metrics"].index])


#: Kind -> its loader (what :func:`load_run` dispatches on).
LOADERS: dict[str, Callable[[Path], Any]] = {
    "walkforward": load_walkforward,
    "tune": load_tune,
    "train": load_train,
    "backtest": load_backtest,
}


def load_run(run: RunFolder):
    """The view of ``run`` (a :class:`BacktestView`, :class:`TuneView`, ...).

    Raises
    ------
    RunFolderError
        When ``run`` cannot be shown (its ``problem``) or one of its files is broken.
    """
    if run.kind is None:
        raise RunFolderError(run.problem or f"{str(run.path)!r} is not a run folder.")
    return LOADERS[run.kind](run.path)
