"""``mpo train --trials N``: an Optuna search of DMPO's training hyperparameters on the
validation window, with the deflated Sharpe ratio of the selection.

Every trial trains DMPO with one point of :data:`SEARCH_SPACE` (learning rate, hidden
size, inference turnover limit ``delta``, L1 trading penalty, feature window) on the
training split and scores it by the **sequential validation Sharpe ratio** net of costs
(:func:`mpo.learn.evaluation.run_sequential`: ``w_prev`` carried and drifted, the hard
limit, the spec's cost model). The test split is never built inside a trial: the
selection cannot see it (tested by perturbing the test window's returns).

All trials share one calendar: the splits are cut once, on the dataset of the longest
window of the search (its purge gap ``T_max + H - 1`` suffices for every window), and
every trial's dataset takes the positions of those dates (:func:`aligned_splits`); the
run's final evaluation uses the same splits, so the selected trial's model *is* the
run's DMPO model (its checkpoint becomes ``dmpo.pt``, not retrained).

The machinery is :mod:`mpo.tuning`'s: a journal storage in the run folder
(``trials.journal``, :func:`mpo.tuning.open_storage`, durable and repaired after a
kill), the seeded TPE sampler whose every draw depends only on the finished trials
(:class:`mpo.tuning.sampler.ProgressSeededSampler`), dead-worker recovery
(:func:`mpo.tuning.recover_stale_trials`) and the refusal to resume a study under
another configuration (:func:`mpo.tuning.storage.check_config`). Each trial trains
durably in ``trials/<key>/`` (its progress file per epoch), so a rerun of the same
command resumes the study and the trial that was interrupted. The deflated Sharpe ratio
(:func:`mpo.metrics.deflated_sharpe_ratio`) takes ``N`` = finished trials and the
variance of the trials' per-period validation Sharpe ratios.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import shutil
import socket
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import optuna
from optuna.trial import TrialState

from mpo.errors import DataError, SpecError, TuningError
from mpo.learn.config import TrainSpec
from mpo.learn.dataset import Split, WindowDataset, chronological_split, make_dataset
from mpo.learn.evaluation import dmpo_decider, run_sequential
from mpo.learn.fitting import Trained
from mpo.learn.losses import TrainingCosts
from mpo.metrics import deflated_sharpe_ratio, return_moments

__all__ = [
    "SEARCH_SPACE",
    "JOURNAL",
    "SearchParam",
    "SearchResult",
    "SplitDates",
    "aligned_splits",
    "clear_search",
    "find_unfinished_search",
    "run_search",
    "trial_spec",
]

logger = logging.getLogger(__name__)

#: The study's journal file in the run folder.
JOURNAL = "trials.journal"
#: Folder of the trials' checkpoints in the run folder.
TRIALS_DIR = "trials"

TrainTrial = Callable[[TrainSpec, WindowDataset, Split, Split, Path], Trained]


@dataclass(frozen=True)
class SearchParam:
    """One searched hyperparameter: ``[section] key`` of the training spec in ``[low, high]``."""

    name: str
    section: str
    key: str
    low: float
    high: float
    log: bool = True
    integer: bool = False

    def suggest(self, trial: optuna.Trial) -> float | int:
        if self.integer:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, self.low, self.high, log=self.log)

    def describe(self) -> dict:
        return {"section": self.section, "key": self.key, "low": self.low, "high": self.high,
                "log": self.log, "integer": self.integer}  # fmt: skip


#: What ``--trials`` searches (names are the Optuna parameter names).
SEARCH_SPACE: tuple[SearchParam, ...] = (
    SearchParam("lr", "train", "lr", 1e-3, 3e-2),
    SearchParam("hidden", "encoder", "hidden", 8, 64, integer=True),
    SearchParam("delta", "qp", "delta", 0.05, 0.5),
    SearchParam("l1_penalty", "train", "l1_penalty", 1e-4, 1e-2),
    SearchParam("window", "features", "window", 5, 30, log=False, integer=True),
)


def trial_spec(spec: TrainSpec, params: dict, space=SEARCH_SPACE) -> TrainSpec:
    """``spec`` with the searched ``params`` (by :class:`SearchParam` name) put in place."""
    by_name = {p.name: p for p in space}
    unknown = sorted(set(params) - set(by_name))
    if unknown:
        raise SpecError(f"unknown searched parameter(s) {unknown}; known: {sorted(by_name)}.")
    sections: dict[str, dict] = {}
    for name, value in params.items():
        p = by_name[name]
        sections.setdefault(p.section, {})[p.key] = value
    return spec.with_updates(**sections)


@dataclass(frozen=True)
class SplitDates:
    """The dates of the three splits, shared by every trial and the final evaluation."""

    train_end: str
    val: tuple[str, str]
    test: tuple[str, str]

    @classmethod
    def cut(cls, spec: TrainSpec, market, space=SEARCH_SPACE) -> SplitDates:
        """Splits of ``spec`` on the dataset of the longest searched window."""
        longest = max([spec.features.window] + [int(p.high) for p in space if p.key == "window"])
        ref = spec.with_updates(features={"window": longest})
        ds = make_dataset(
            market, ref.feature_spec(), ref.cost_model().estimates, adv=ref.has_limits
        )
        s = ref.split
        train, val, test = chronological_split(ds, s.val, s.test, s.purge)
        day = lambda t: str(t.date())  # noqa: E731
        return cls(day(train.end), (day(val.start), day(val.end)), (day(test.start), day(test.end)))

    def describe(self) -> dict:
        return {"train_end": self.train_end, "val": list(self.val), "test": list(self.test)}


def aligned_splits(ds: WindowDataset, dates: SplitDates, test: bool = True) -> tuple[Split, ...]:
    """``ds``'s positions on ``dates``: train, val (and test unless ``test=False``)."""
    when = ds.dates[ds.positions]
    masks = {
        "train": when <= dates.train_end,
        "val": (when >= dates.val[0]) & (when <= dates.val[1]),
    }
    if test:
        masks["test"] = (when >= dates.test[0]) & (when <= dates.test[1])
    out = []
    for name, mask in masks.items():
        p = ds.positions[np.asarray(mask)]
        if len(p) < 2:
            raise DataError(f"the {name} split has {len(p)} decision dates in this dataset.")
        out.append(Split(name, p, ds.dates[p[0]], ds.dates[p[-1]]))
    return tuple(out)


@dataclass
class SearchResult:
    """The finished search: the selected spec, its trial folder, and the record."""

    spec: TrainSpec
    dates: SplitDates
    checkpoint: Path
    record: dict

    def install(self, run_dir: Path) -> None:
        """The selected trial's checkpoint becomes the run's ``dmpo.pt``."""
        target = Path(run_dir) / "dmpo.pt"
        shutil.copyfile(self.checkpoint, target)


def _key(params: dict) -> str:
    text = json.dumps(params, sort_keys=True, default=float)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _objective(spec, market, dates, run_dir: Path, train: TrainTrial, space):
    def objective(trial: optuna.Trial) -> float:
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {p.name: p.suggest(trial) for p in space}
        sp = trial_spec(spec, params, space)
        costs = TrainingCosts.from_spec(sp)
        ds = make_dataset(market, sp.feature_spec(), costs.model.estimates, adv=sp.has_limits)
        tr_split, val = aligned_splits(ds, dates, test=False)  # the test split never exists
        folder = run_dir / TRIALS_DIR / _key(params)
        folder.mkdir(parents=True, exist_ok=True)
        tr = train(sp, ds, tr_split, val, folder)
        decider = dmpo_decider(tr.model, ds, val, value=costs.value)
        ev = run_sequential("dmpo", decider, ds, val, costs, sp.qp.w_max)
        m = ev.metrics()
        trial.set_user_attr("folder", str(folder.relative_to(run_dir)))
        trial.set_user_attr("moments", return_moments(ev.excess))
        trial.set_user_attr("val", {k: m[k] for k in ("sharpe", "annual_turnover", "annual_cost")})
        trial.set_user_attr("best_epoch", tr.fit.best_epoch)
        logger.info("trial %d %s: validation Sharpe %.3f", trial.number, params, m["sharpe"])
        return m["sharpe"]  # NaN: optuna marks the trial failed

    return objective


def _sampler(seed: int, n_trials: int) -> optuna.samplers.BaseSampler:
    from mpo.tuning.sampler import ProgressSeededSampler

    n_startup = min(10, max(n_trials // 3, 1))

    def tpe(s: int) -> optuna.samplers.BaseSampler:
        return optuna.samplers.TPESampler(seed=s, n_startup_trials=n_startup)

    return ProgressSeededSampler(tpe, seed, 0)


def _record(study: optuna.Study, n_trials: int, space, dates: SplitDates) -> dict:
    from mpo.tuning.storage import count_trials

    done = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    done = [t for t in done if t.value is not None and math.isfinite(t.value)]
    if not done:
        raise TuningError(
            f"no trial of study {study.study_name!r} completed with a finite validation "
            "Sharpe ratio; see the log for the failures (e.g. a window too long for the data)."
        )
    best = max(done, key=lambda t: (t.value, -t.number))
    sharpes = np.asarray([t.user_attrs["moments"]["sharpe"] for t in done])
    finished = count_trials(study)[0]
    trials = [
        {
            "number": t.number,
            "state": t.state.name,
            "params": t.params,
            "value": t.value,
            "val": t.user_attrs.get("val"),
            "best_epoch": t.user_attrs.get("best_epoch"),
            "fail_reason": t.user_attrs.get("fail_reason"),
        }
        for t in study.get_trials(deepcopy=False)
    ]
    return {
        "n_trials": n_trials,
        "study": study.study_name,
        "storage": JOURNAL,
        "objective": "sequential validation Sharpe ratio (annualised, net of costs)",
        "search_space": {p.name: p.describe() for p in space},
        "splits": dates.describe(),
        "trials": trials,
        "selected": {
            "number": best.number,
            "params": best.params,
            "val_sharpe": best.value,
            "folder": best.user_attrs["folder"],
        },
        "deflated": deflated_sharpe_ratio(best.user_attrs["moments"], sharpes, finished),
    }


def find_unfinished_search(candidates: list[Path], spec: TrainSpec, market) -> Path | None:
    """The newest unfinished run folder among ``candidates`` whose study has this spec
    and data (a rerun of ``mpo train --trials`` without ``--run-dir`` resumes it)."""
    from mpo.tuning import open_storage

    for run_dir in sorted(candidates, reverse=True):
        journal = run_dir / JOURNAL
        if not journal.is_file() or (run_dir / "results.json").exists():
            continue
        try:
            study = optuna.load_study(study_name=f"train-{spec.name}",
                                      storage=open_storage(journal))  # fmt: skip
        except Exception:  # any unreadable or foreign journal: not this run's
            continue
        config = study.user_attrs.get("mpo_config", {})
        same_spec = config.get("spec") == json.loads(json.dumps(spec.model_dump(), default=str))
        if same_spec and config.get("data_fingerprint") == market.fingerprint():
            return run_dir
    return None


def clear_search(run_dir: Path) -> None:
    """Remove a previous search's journal and trial folders from ``run_dir`` (``--force``)."""
    (Path(run_dir) / JOURNAL).unlink(missing_ok=True)
    shutil.rmtree(Path(run_dir) / TRIALS_DIR, ignore_errors=True)


def run_search(
    spec: TrainSpec,
    market,
    run_dir: Path,
    n_trials: int,
    train: TrainTrial,
    space: tuple[SearchParam, ...] = SEARCH_SPACE,
) -> SearchResult:
    """Run (or resume) the study in ``run_dir / trials.journal`` up to ``n_trials``.

    ``train(spec, ds, train, val, folder)`` trains one trial's DMPO model durably in
    ``folder`` (``mpo train`` writes ``folder/dmpo.pt``). The sampler is seeded by
    ``spec.train.seed``.

    Raises
    ------
    TuningError
        ``n_trials < 1``, a study of another configuration in the journal, or no
        trial completed.
    """
    from mpo.tuning import open_storage, recover_stale_trials
    from mpo.tuning.storage import check_config, count_trials
    from mpo.tuning.workers import StopAt

    if n_trials < 1:
        raise TuningError(f"--trials must be >= 1, got {n_trials=}.")
    run_dir = Path(run_dir)
    dates = SplitDates.cut(spec, market, space)
    storage = open_storage(run_dir / JOURNAL)
    name = f"train-{spec.name}"
    sampler = _sampler(spec.train.seed, n_trials)
    study = optuna.create_study(study_name=name, storage=storage, direction="maximize",
                                load_if_exists=True, sampler=sampler)  # fmt: skip
    config = {"spec": spec.model_dump(), "search_space": {p.name: p.describe() for p in space},
              "splits": dates.describe(), "data_fingerprint": market.fingerprint()}  # fmt: skip
    check_config(study, config)
    recover_stale_trials(study, storage)
    if count_trials(study)[0] < n_trials:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.optimize(_objective(spec, market, dates, run_dir, train, space),
                           callbacks=[StopAt(n_trials)], catch=(DataError, SpecError))  # fmt: skip
    record = _record(study, n_trials, space, dates)
    sel = record["selected"]
    logger.info("selected trial %d %s (validation Sharpe %.3f, DSR %.3f)", sel["number"],
                sel["params"], sel["val_sharpe"], record["deflated"]["dsr"])  # fmt: skip
    return SearchResult(
        spec=trial_spec(spec, sel["params"], space),
        dates=dates,
        checkpoint=run_dir / sel["folder"] / "dmpo.pt",
        record=record,
    )
