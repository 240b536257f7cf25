"""Walk-forward research: refit through time, one stitched out-of-sample run per spec.

:func:`plan` resolves the fold schedule, the purge and the task graph (what
``--dry-run`` prints); :func:`walk_forward` runs the graph on Dask
(:mod:`mpo.research.engine`) and writes the run folder:

- ``config.json``: the options, specs, universes, data fingerprints, seed,
  package versions (written first; a rerun with another configuration into
  the same folder is refused);
- ``folds.csv``: one row per universe, spec and fold: windows, what was
  fitted, the chosen parameters, trials, the training Sharpe of a tuned
  fold's winner, the validation score a trained fold stopped on (its
  Sharpe for ``dmpo``, minus the MSE for ``two_stage``) and the test Sharpe;
- ``<spec>/returns.parquet`` ... (``universes/<u>/<spec>/`` for several
  universes): the stitched series in the layout of a backtest run;
- ``summary.json``: per universe and policy the metrics, CIs, paired
  differences to Hold and equal weight, Holm-adjusted p-values and the DSR;
  with several universes the pooled aggregate;
- ``report.html``.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from mpo.backtest import _check_shared, hold_spec, load_result
from mpo.config import PolicySpec, parse_spec
from mpo.data.market import MarketData
from mpo.errors import ResearchError
from mpo.io import package_versions, write_json
from mpo.research.schedule import Fold, make_folds, resolve_purge
from mpo.research.statistics import (
    REFERENCES,
    aggregate,
    fold_sharpes,
    trial_variance,
    universe_metrics,
)
from mpo.research.tasks import (
    FitTask,
    StitchTask,
    fit_mode,
    label_horizon,
    spec_history,
)

__all__ = ["Plan", "WalkForwardResult", "plan", "walk_forward", "with_references"]

logger = logging.getLogger(__name__)


def with_references(specs: list[PolicySpec]) -> list[PolicySpec]:
    """``specs`` with Hold and equal weight first (built from the first spec's shared sections)."""
    if not specs:
        raise ResearchError("no policy to walk forward: give at least one spec.")
    like = specs[0].model_dump()
    shared = {k: like[k] for k in ("data", "backtest", "costs")}
    kinds = {s.kind for s in specs}
    out = list(specs)
    if "equal_weight" not in kinds:
        out.insert(0, parse_spec({"name": "equal_weight", "kind": "equal_weight", **shared}))
    if "hold" not in kinds:
        out.insert(0, hold_spec(specs[0]))
    out.sort(key=lambda s: REFERENCES.index(s.kind) if s.kind in REFERENCES else len(REFERENCES))
    _check_shared(out)
    for s in out:
        if s.kind in REFERENCES and s.name != s.kind:
            raise ResearchError(
                f"policy {s.name!r} is kind {s.kind!r}: name the reference policies "
                f"{' and '.join(REFERENCES)} (the comparisons are labelled by these names)."
            )
    return out


@dataclass
class Plan:
    """The resolved schedule and task graph of a walk-forward run."""

    specs: list[PolicySpec]
    folds: list[Fold]
    purge: int
    purge_rule: str
    history: int
    universes: dict[str, MarketData]
    paths: dict[str, str]
    fits: list[FitTask]
    stitches: list[StitchTask]
    root: Path
    config: dict

    def describe(self) -> str:
        """What ``--dry-run`` prints: folds, purge rule, the work implied."""
        from mpo.research.schedule import fold_frame

        modes = {s.name: fit_mode(s) for s in self.specs}
        n_tuned = sum(m == "tuned" for m in modes.values())
        n_trained = sum(m == "trained" for m in modes.values())
        trials = sum(t.n_trials for t in self.fits if modes[t.spec.name] == "tuned")
        lines = [
            f"{len(self.folds)} folds, purge {self.purge} periods ({self.purge_rule}), "
            f"{len(self.universes)} universe(s), {len(self.specs)} policies "
            f"({', '.join(f'{n}: {m}' for n, m in modes.items())})",
            fold_frame(self.folds).to_string(),
            f"tasks: {len(self.fits)} fits ({n_tuned} tuned spec(s): {trials} trials in all; "
            f"{n_trained} trained spec(s)) and {len(self.stitches)} stitched runs",
            f"run folder: {self.root}",
        ]
        return "\n".join(lines)


def _universe_paths(names: list[str]) -> dict[str, str]:
    return {names[0]: "."} if len(names) == 1 else {u: f"universes/{u}" for u in names}


def plan(
    specs: list[PolicySpec],
    universes: dict[str, MarketData],
    root: str | Path,
    *,
    train: str = "3y",
    test: str = "1y",
    start=None,
    end=None,
    anchored: bool = False,
    purge: str | int | None = "auto",
    trials: int | None = None,
    seed: int = 0,
    storage: str | None = None,
    data_note: dict | None = None,
) -> Plan:
    """Resolve folds, purge and tasks; nothing runs.

    Parameters
    ----------
    specs
        The policies; Hold and equal weight are added when missing.
    universes
        Universe name -> its data (one entry for a single-universe run). All
        must share one calendar.
    root
        The run folder.
    train, test, start, end, anchored, purge
        The schedule (:func:`mpo.research.schedule.make_folds`,
        :func:`~mpo.research.schedule.resolve_purge`).
    trials
        Trials per fold study (default each spec's ``[tuning] trials``).
    storage
        Optuna storage of the fold studies (default: ``studies.journal`` in
        the run folder; a PostgreSQL URL when workers are on several machines).
    """
    if not universes:
        raise ResearchError("no universe to walk forward.")
    if trials is not None and (isinstance(trials, bool) or int(trials) < 1):
        raise ResearchError(f"--trials must be >= 1, got {trials!r}.")
    specs = with_references(list(specs))
    root = Path(root)
    names = list(universes)
    first = universes[names[0]]
    for u in names[1:]:
        if not universes[u].calendar.equals(first.calendar):
            raise ResearchError(
                f"universe {u!r} has another calendar than {names[0]!r}; every universe of a "
                "walk-forward must share the dates (pooled statistics pair them)."
            )
    horizons = {s.name: label_horizon(s) for s in specs if fit_mode(s) != "none"}
    history = {s.name: spec_history(s) for s in specs}
    n_purge, rule = resolve_purge(purge, horizons, history)
    need = max(history.values())
    folds = make_folds(
        first.calendar,
        train=train,
        test=test,
        start=start,
        end=end,
        anchored=anchored,
        purge=n_purge,
        history=need,
        data_name=f"data {first.name!r}",
    )
    storage = storage or str(root / "studies.journal")
    paths = _universe_paths(names)
    fits, stitches = [], []
    fingerprints = {u: m.fingerprint() for u, m in universes.items()}
    for u, fp in fingerprints.items():
        for spec in specs:
            mode = fit_mode(spec)
            fold_tasks = []
            if mode != "none":
                fold_tasks = [
                    FitTask(u, spec, f, str(root), fp, storage, trials, seed) for f in folds
                ]
            fits.extend(fold_tasks)
            stitches.append(
                StitchTask(
                    u,
                    spec,
                    tuple(folds),
                    str(root),
                    str(root / paths[u] / spec.name),
                    fp,
                    tuple(t.key for t in fold_tasks),
                    tuple(t.identity for t in fold_tasks),
                )
            )
    config = {
        "kind": "walkforward",
        "train": train,
        "test": test,
        "start": None if start is None else str(start),
        "end": None if end is None else str(end),
        "anchored": anchored,
        "purge": n_purge,
        "purge_rule": rule,
        "trials": trials,
        "seed": seed,
        "specs": {s.name: s.model_dump() for s in specs},
        "universes": {
            u: {"tickers": m.tickers, "fingerprint": fingerprints[u], "path": paths[u]}
            for u, m in universes.items()
        },
        "data": data_note or first.describe(),
    }
    return Plan(specs, folds, n_purge, rule, need, universes, paths, fits, stitches, root, config)


def _check_folder(root: Path, config: dict, force: bool) -> None:
    """Refuse to mix two different walk-forwards in one folder (unless ``force``)."""
    path = root / "config.json"
    if not path.is_file() or force:
        return
    try:
        old = json.loads(path.read_text())
    except ValueError:
        return
    old = {k: v for k, v in old.items() if k not in ("versions", "created", "storage")}
    new = json.loads(json.dumps(config, default=str))  # as config.json holds it
    if old != new:
        from mpo.tuning.storage import leaf_diff

        diff = leaf_diff(old, new)
        raise ResearchError(
            f"{root} holds another walk-forward ({'; '.join(diff[:3])}); use another --out "
            "(or --force to reuse the folder: finished tasks of the old run whose inputs "
            "differ are run again)."
        )


@dataclass
class WalkForwardResult:
    """A finished walk-forward: the plan, per-universe metrics, folds table, failures."""

    plan: Plan
    metrics: dict[str, dict[str, dict]]
    folds: pd.DataFrame
    aggregate: dict | None
    failures: dict[str, str] = field(default_factory=dict)
    skipped: int = 0

    def table(self, universe: str | None = None) -> pd.DataFrame:
        """One row of metrics per policy (first universe by default)."""
        u = universe or next(iter(self.metrics))
        return pd.DataFrame(self.metrics[u]).T

    def aggregate_table(self) -> pd.DataFrame | None:
        if not self.aggregate:
            return None
        return pd.DataFrame(self.aggregate["policies"]).T


def _folds_table(plan: Plan, fits: dict[str, dict], per_fold) -> pd.DataFrame:
    rows = []
    keys = {(t.universe, t.spec.name, t.fold.index): t.key for t in plan.fits}
    for u in plan.universes:
        for spec in plan.specs:
            mode = fit_mode(spec)
            sharpes = per_fold.get((u, spec.name))
            for f in plan.folds:
                fit = fits.get(keys.get((u, spec.name, f.index)))
                row = {"universe": u, "spec": spec.name, **f.describe(), "fit": mode}
                row["n_trials"] = (fit or {}).get("n_trials", 0 if mode == "none" else np.nan)
                params = (fit or {}).get("params", {})
                row["params"] = json.dumps(params, sort_keys=True)
                for k, v in params.items():
                    row[f"param_{k}"] = v
                row["train_sharpe"] = (fit or {}).get("train_sharpe", np.nan)
                row["val_score"] = (fit or {}).get("val_score", np.nan)
                row["test_sharpe"] = sharpes[f.index] if sharpes else np.nan
                rows.append(row)
    return pd.DataFrame(rows)


def walk_forward(
    plan_: Plan,
    *,
    workers: int = 1,
    scheduler: str | None = None,
    progress: bool = True,
    force: bool = False,
    report: bool = True,
) -> WalkForwardResult:
    """Run the plan's tasks on Dask and write the run folder (see the module docstring)."""
    from mpo.io import atomic_path
    from mpo.research.engine import connect, run_graph

    root = plan_.root
    _check_folder(root, plan_.config, force)
    root.mkdir(parents=True, exist_ok=True)
    write_json(
        {**plan_.config, "versions": package_versions(), "created": pd.Timestamp.now().isoformat()},
        root / "config.json",
    )
    with connect(workers, scheduler) as client:
        graph = run_graph(client, plan_.universes, plan_.fits, plan_.stitches, progress=progress)
    failures = dict(graph.failures)
    # every configuration tried: all trials of every tuned fold, one per fold for the others
    tried = [graph.fits[t.key] for t in plan_.fits if t.key in graph.fits]
    variance = trial_variance([f.get("trial_sharpes", []) for f in tried])
    fixed = sum(fit_mode(s) == "none" for s in plan_.specs) * len(plan_.folds)
    n_trials = sum(int(f.get("n_trials", 1)) for f in tried) + fixed
    metrics, per_universe, per_fold = {}, {}, {}
    for u in plan_.universes:
        results = {}
        for s in plan_.stitches:
            if s.universe != u:
                continue
            if s.key not in graph.stitched:
                failures.setdefault(s.key, "not run: a fit it depends on failed")
                continue
            r = load_result(s.out, s.spec)
            results[s.spec.name] = r
            per_fold[(u, s.spec.name)] = fold_sharpes(r, plan_.folds)
        per_universe[u] = results
        if results:
            metrics[u] = universe_metrics(results, variance, max(n_trials, 1), plan_.config["seed"])
    if not metrics:
        raise ResearchError(
            "every task failed: " + "; ".join(f"{k}: {v}" for k, v in failures.items())
        )
    folds = _folds_table(plan_, graph.fits, per_fold)
    with atomic_path(root / "folds.csv") as tmp:
        folds.to_csv(tmp, index=False)
    agg = aggregate(per_universe, plan_.config["seed"]) if len(per_universe) > 1 else None
    summary = {
        "kind": "walkforward",
        "config": plan_.config,
        "folds": [f.describe() for f in plan_.folds],
        "universes": {
            u: {"path": plan_.paths[u], "tickers": plan_.universes[u].tickers, "policies": m}
            for u, m in metrics.items()
        },
        "aggregate": agg,
        "trials": {"n": n_trials, "within_fold_sharpe_variance": variance},
        "failures": failures,
        "solver_fallbacks": {
            k: v["fallback"] for k, v in graph.stitched.items() if v.get("fallback")
        },
        "tasks": {"skipped": graph.skipped, "ran": graph.ran},
        "versions": package_versions(),
        "created": pd.Timestamp.now().isoformat(timespec="seconds"),
    }
    write_json(summary, root / "summary.json")
    if report:
        try:
            from mpo.report.walkforward import write_walkforward_report

            write_walkforward_report(root)
        except Exception as exc:  # the results are written; a figure must not lose them
            logger.error("could not write the report: %s", exc)
    return WalkForwardResult(plan_, metrics, folds, agg, failures, graph.skipped)
