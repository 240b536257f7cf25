"""``tune``: run a study on the training window, select the winner, test it out of sample.

The study writes trials into its storage; :class:`TuningResult` reads them
back (trial frame, best trial, deflated Sharpe ratio) and holds the
test-window backtest. Pictures are drawn by :mod:`mpo.tuning.plots` from the
result only.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from mpo.backtest import BacktestRun, hold_spec, run_backtests
from mpo.config import PolicySpec, TuningSpec, parse_spec
from mpo.data.market import MarketData
from mpo.errors import TuningError
from mpo.io import atomic_path, package_versions, write_json
from mpo.metrics import deflated_sharpe_ratio
from mpo.policies import POLICY_KINDS, kind_of
from mpo.tuning.job import TuningJob, tuned_spec
from mpo.tuning.objective import get_objective
from mpo.tuning.storage import (
    check_config,
    count_trials,
    open_storage,
    recover_stale_trials,
    redact,
    study_config,
)
from mpo.tuning.windows import Windows, resolve_windows
from mpo.tuning.workers import run_workers

__all__ = ["TuningResult", "best_trial", "trials_frame", "tune"]

logger = logging.getLogger(__name__)


@dataclass
class TuningResult:
    """A finished tuning run: the study, the winner and its out-of-sample test."""

    study_name: str
    storage: str
    windows: Windows
    objective: str
    best_params: dict
    best_value: float
    best_number: int
    train_metrics: dict
    deflated: dict
    trials: pd.DataFrame
    test: BacktestRun | None
    config: dict
    seed: int
    spec: PolicySpec
    tuned_spec: PolicySpec
    plots: dict = field(default_factory=dict)

    def table(self) -> pd.DataFrame:
        """The test-window metrics table (Hold first)."""
        if self.test is None:
            raise TuningError("this tuning run has no test-window backtest (evaluate=False).")
        return self.test.table()

    def summary(self) -> dict:
        """JSON-ready summary: windows, winner, train metrics, DSR, test metrics, provenance."""
        n = len(self.trials)
        return {
            "study": self.study_name,
            "storage": redact(self.storage),
            "objective": self.objective,
            "windows": self.windows.describe(),
            "best_trial": self.best_number,
            "best_params": self.best_params,
            "best_train_value": self.best_value,
            "train_metrics": self.train_metrics,
            "deflated_sharpe": self.deflated,
            "n_finished": int(self.trials["state"].isin(["COMPLETE", "PRUNED"]).sum()) if n else 0,
            "n_failed": int((self.trials["state"] == "FAIL").sum()) if n else 0,
            "test_metrics": self.table().to_dict(orient="index") if self.test else None,
            "config": self.config,
            "seed": self.seed,
            "versions": package_versions(),
            "created": pd.Timestamp.now().isoformat(timespec="seconds"),
        }

    def save(self, run_dir: str | Path, spec_path: str | Path | None = None) -> Path:
        """Write the trial history, summary, test backtest and plots to ``run_dir``.

        With ``spec_path``, also write ``<spec>.tuned.json`` next to the spec
        (as cvxportfolio keeps ``*_hyper_parameters.json``). Every file is
        written atomically.
        """
        from mpo.tuning.plots import write_plots

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        with atomic_path(run_dir / "trials.csv") as tmp:
            self.trials.to_csv(tmp, index=False)
        summary_ = self.summary()
        write_json(summary_, run_dir / "tuning.json")
        if self.test is not None:
            self._save_test(run_dir)
        self.plots = write_plots(self, run_dir)
        if spec_path is not None:
            target = Path(spec_path).with_suffix(".tuned.json")
            try:
                write_json(
                    {
                        "spec": str(spec_path),
                        "params": self.best_params,
                        **{k: v for k, v in summary_.items() if k != "config"},
                        "run_dir": str(run_dir),
                    },
                    target,
                )
            except OSError as exc:
                logger.warning("could not write %s: %s", target, exc)
        return run_dir

    def _save_test(self, run_dir: Path) -> None:
        from mpo.report import write_report

        self.test.save(run_dir / "test")
        w = self.windows
        write_report(
            self.test,
            run_dir / "report.html",
            title=f"mpo tune {self.spec.name}: test window",
            notes=(
                f"Tuned on {w.train_start.date()} to {w.train_end.date()} ({self.objective}, "
                f"study {self.study_name!r}); purge {w.gap} periods; best parameters "
                f"{self.best_params}; deflated Sharpe ratio of the selection "
                f"{self.deflated['dsr']:.3f} over {self.deflated['n_trials']} trials."
            ),
        )


def trials_frame(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, value, ``param_*``, scalar user attributes, last step."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        row = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value,
            **{f"param_{k}": v for k, v in t.params.items()},
            "datetime_start": t.datetime_start,
            "datetime_complete": t.datetime_complete,
        }
        for k, v in t.user_attrs.items():
            if k == "moments":
                row["sharpe_per_period"] = v.get("sharpe")
            elif not isinstance(v, dict | list):
                row[k] = v
        if t.intermediate_values:
            row["last_step"] = max(t.intermediate_values)
        rows.append(row)
    return pd.DataFrame(rows)


def best_trial(study: optuna.Study, objective: str, tuning: TuningSpec) -> optuna.trial.FrozenTrial:
    """The completed trial of highest value; among feasible ones if the objective is constrained.

    Raises
    ------
    TuningError
        When no trial completed (with the reason one of them failed).
    """
    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        fails = study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
        reason = next((t.user_attrs.get("fail_reason") for t in fails if t.user_attrs), None)
        raise TuningError(
            f"study {study.study_name!r} has no completed trial"
            + (f"; trials failed, e.g.: {reason}" if reason else "")
            + ". Check the spec's constraints and the data."
        )
    obj = get_objective(objective)
    if obj.constrained:
        feasible = [t for t in done if obj.feasible(t.user_attrs, tuning)]
        if feasible:
            done = feasible
        else:
            logger.warning(
                "no trial met %s; taking the best penalised one", obj.describe_constraints(tuning)
            )
    return max(done, key=lambda t: t.value)


def _check_arguments(spec: PolicySpec, workers: int, n_trials: int) -> None:
    tunable = kind_of(spec).tunable
    if not tunable:
        raise TuningError(
            f"policy {spec.name!r} is kind {spec.kind!r}, which has no parameters to tune; kinds "
            "with tunable parameters: "
            + ", ".join(n for n, k in POLICY_KINDS.items() if k.tunable)
            + "."
        )
    extra = sorted(set(spec.tuning.params) - set(tunable))
    if extra:
        raise TuningError(
            f"policy {spec.name!r} (kind {spec.kind!r}) tunes {', '.join(tunable)}; "
            f"[tuning.params] also names {extra}: remove them (a dmpo_qp policy executes the "
            "trained QP, so only its inference turnover limit, [tuning.params.delta], is tunable)."
        )
    if workers < 1:
        raise TuningError(f"workers must be >= 1, got {workers}.")
    if n_trials < 1:
        raise TuningError(f"trials must be >= 1, got {n_trials}.")


def tune(
    spec: PolicySpec,
    market: MarketData,
    *,
    trials: int | None = None,
    train: tuple[str | None, str | None] | None = None,
    test: tuple[str | None, str | None] | None = None,
    purge: int | str | None = None,
    storage: str | Path | None = None,
    study_name: str | None = None,
    workers: int = 1,
    seed: int = 0,
    objective: str | None = None,
    evaluate: bool = True,
    progress: bool = True,
    timeout: float | None = None,
    windows: Windows | None = None,
) -> TuningResult:
    """Tune ``spec``'s multipliers on the training window and test the winner.

    Parameters
    ----------
    spec
        An ``spo``, ``mpo``, ``dmpo_mpo`` or ``dmpo_qp`` spec; its ``[tuning]``
        section gives the search space and defaults.
    market
        The whole data set; workers only ever receive its part up to the end
        of the training window.
    trials
        Finished (completed or pruned) trials the study should have; a
        resumed study runs only the missing ones.
    train, test, purge
        Windows (inclusive dates) and purge gap in periods; see
        :func:`mpo.tuning.windows.resolve_windows`.
    storage
        Journal file path or SQLAlchemy URL
        (:func:`mpo.tuning.storage.open_storage`); default
        ``runs/studies.journal``.
    study_name
        Default ``<spec name>-<objective>``. An existing study of that name is
        resumed if its configuration matches, else :class:`TuningError`.
    workers
        Worker processes running trials in parallel on this machine (more
        machines: run ``mpo tune`` on each with the same PostgreSQL storage).
    seed
        Seeds the samplers and the bootstrap.
    objective
        Name of a registered tuning objective
        (:data:`mpo.tuning.objective.OBJECTIVES`); default the spec's
        ``[tuning] objective``.
    evaluate
        Backtest the winner on the test window beside Hold, equal weight and
        the untuned spec.
    progress
        Show progress bars.
    timeout
        Stop the workers after this many seconds.
    windows
        Already resolved windows (walk-forward folds choose their own purge
        rule, :mod:`mpo.research.schedule`); ``train``, ``test`` and ``purge``
        are then ignored.
    """
    n_trials = trials if trials is not None else spec.tuning.trials
    _check_arguments(spec, workers, n_trials)
    kind = objective or spec.tuning.objective
    obj = get_objective(kind)
    if windows is None:
        windows = resolve_windows(spec, market, train=train, test=test, purge=purge)
    storage = str(storage) if storage is not None else str(Path("runs") / "studies.journal")
    if workers > 1 and storage.startswith("sqlite"):
        raise TuningError(
            f"SQLite storage {storage!r} supports one worker at a time (concurrent writers lock "
            "it); use the default journal file or a PostgreSQL URL with --workers > 1."
        )
    study_name = study_name or f"{spec.name}-{kind}"
    job = TuningJob(
        spec=spec,
        market=market.slice(end=windows.train_end),
        windows=windows,
        objective=kind,
        storage=storage,
        study_name=study_name,
        n_trials=n_trials,
        seed=seed,
        prune=spec.tuning.prune,
        sub_periods=spec.tuning.sub_periods,
    )
    store = open_storage(storage)
    study = optuna.create_study(
        study_name=study_name, storage=store, direction="maximize", load_if_exists=True
    )
    config = study_config(job, obj.settings(spec.tuning))
    check_config(study, config)
    recover_stale_trials(study, store)
    done, failed = count_trials(study)
    logger.info(
        "study %r: %d finished, %d failed trials; target %d", study_name, done, failed, n_trials
    )
    if done < n_trials:
        run_workers(job, workers, progress, timeout)
    study = optuna.load_study(study_name=study_name, storage=store)
    best = best_trial(study, kind, spec.tuning)
    tuned = tuned_spec(spec, best.params)
    return TuningResult(
        study_name=study_name,
        storage=storage,
        windows=windows,
        objective=kind,
        best_params=dict(best.params),
        best_value=float(best.value),
        best_number=best.number,
        train_metrics={
            k: best.user_attrs[k]
            for k in ("annual_return", "annual_volatility", "sharpe", "annual_turnover")
            if k in best.user_attrs
        },
        deflated=_deflated(study, best),
        trials=trials_frame(study),
        test=_evaluate(spec, tuned, market, windows, progress, seed) if evaluate else None,
        config=config,
        seed=seed,
        spec=spec,
        tuned_spec=tuned,
    )


def _deflated(study: optuna.Study, best: optuna.trial.FrozenTrial) -> dict:
    """The winner's deflated Sharpe ratio over the study's trials."""
    sharpes = [
        t.user_attrs["moments"]["sharpe"]
        for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
        if "moments" in t.user_attrs
    ]
    # N counts every finished trial: pruned ones were tried (and rejected) too.
    return deflated_sharpe_ratio(
        best.user_attrs["moments"], np.asarray(sharpes), n_trials=count_trials(study)[0]
    )


def _evaluate(spec, tuned, market, windows: Windows, progress: bool, seed: int) -> BacktestRun:
    """Hold, equal weight, the untuned and the tuned spec on the test window."""
    dumped = spec.model_dump()
    shared = {k: dumped[k] for k in ("data", "backtest", "costs")}
    ew = parse_spec(
        {"name": "equal_weight", "kind": "equal_weight", **shared}, source="<built-in equal_weight>"
    )
    untuned = parse_spec({**dumped, "name": f"{spec.name}-untuned"}, source="<untuned spec>")
    return run_backtests(
        [hold_spec(spec), ew, untuned, tuned],
        market,
        start=windows.test_start,
        end=windows.test_end,
        progress=progress,
        seed=seed,
    )
