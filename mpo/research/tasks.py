"""Walk-forward tasks: pure functions of (spec, fold, universe, data) that write files under a key.

Two kinds of task, both safe to run on any Dask worker that sees the run folder:

- :func:`run_fit` fits one spec on one fold's training window: an Optuna
  study (``tuned``) or one trained model (``trained``). It reads only the
  data up to the window's end.
- :func:`run_stitch` runs the one out-of-sample simulation of a spec over
  every test window, each fold's fit taking over at its boundary.

A task writes its result atomically into ``tasks/<universe>/<spec>/`` with an
*identity* (hash of spec, fold, tickers, data fingerprint, trials, seed); a
task whose result file exists with the same identity is not run again, which
is what makes a killed run resumable. An interrupted tuning task resumes its
fold's study: finished trials are kept, the trial left running is run again,
and the per-trial seeds (:mod:`mpo.tuning.sampler`) make the result equal an
uninterrupted run's; a training task resumes from its last finished epoch,
which gives the same final weights.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from mpo.config import PolicySpec
from mpo.data.market import MarketData
from mpo.errors import ResearchError, SolverError
from mpo.io import write_json
from mpo.policies import cost_model, kind_of, required_history
from mpo.research.schedule import Fold

__all__ = [
    "FitTask",
    "StitchTask",
    "fit_mode",
    "label_horizon",
    "run_fit",
    "run_stitch",
    "spec_history",
    "task_result",
    "training_of",
]

logger = logging.getLogger(__name__)


def fit_mode(spec: PolicySpec) -> str:
    """``trained`` (a learned kind), ``tuned`` (tunable kind with ``[tuning.params]``) or ``none``."""
    kind = kind_of(spec)
    if kind.learned:
        return "trained"
    if kind.tunable and spec.tuning.params:
        return "tuned"
    return "none"


def training_of(spec: PolicySpec):
    """``(TrainSpec, model)`` a learned spec is retrained with on every fold.

    ``[learned] train_spec`` names the training spec, else the one stored in
    the checkpoint is used; ``[learned] model`` names the model, else the
    checkpoint's kind (or its file name: ``two_stage.pt``).
    """
    from mpo.learn.checkpoint import load_checkpoint
    from mpo.learn.config import load_train_spec, parse_train_spec
    from mpo.learn.refit import MODELS

    ln = spec.learned
    ck = Path(ln.checkpoint) if ln.checkpoint else None
    needed = not (ln.train_spec and ln.model)
    stored = load_checkpoint(ck) if needed and ck is not None and ck.is_file() else None
    if ln.train_spec:
        train = load_train_spec(ln.train_spec)
    elif stored is not None and (stored.extra or {}).get("spec"):
        train = parse_train_spec(stored.extra["spec"], source=f"the spec inside {str(ck)!r}")
    else:
        raise ResearchError(
            f"policy {spec.name!r} is learned, and walk-forward retrains its model on every fold, "
            "but it names no training spec: add [learned] train_spec = 'dmpo.toml' (the TOML "
            "`mpo train` reads, relative to the policy spec)."
        )
    model = ln.model
    if model is None and stored is not None:
        model = stored.kind
    if model is None and ck is not None and ck.stem in MODELS:
        model = ck.stem
    return train, model or "dmpo"


def label_horizon(spec: PolicySpec) -> int:
    """Periods after a decision that the fit's labels or objective read (the purge's core)."""
    mode = fit_mode(spec)
    if mode == "trained":
        return int(training_of(spec)[0].qp.horizon)
    return 1 if mode == "tuned" else 0


def spec_history(spec: PolicySpec) -> int:
    """Periods of data a spec needs before its first decision (over its tuned range)."""
    mode = fit_mode(spec)
    if mode == "trained":
        fs = training_of(spec)[0].feature_spec()
        return max(cost_model(spec).min_history, fs.warmup + fs.window)
    if mode == "tuned":
        from mpo.tuning.windows import lookback

        return lookback(spec)
    return required_history(spec)


def _identity(**parts) -> str:
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def task_result(path: Path, identity: str) -> dict | None:
    """The finished result at ``path`` if it has ``identity``, else ``None``."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if data.get("identity") == identity else None


@contextlib.contextmanager
def _locked(folder: Path):
    """Hold ``folder/.lock`` exclusively: a task running twice (a resumed run while the
    killed run's worker finishes) runs once; the second sees the first's result."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _limit_threads():
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
    try:
        from threadpoolctl import threadpool_limits

        return threadpool_limits(1)
    except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
        return contextlib.nullcontext()


@dataclass(frozen=True)
class FitTask:
    """Fit ``spec`` on ``fold``'s training window of universe ``universe``."""

    universe: str
    spec: PolicySpec
    fold: Fold
    root: str
    fingerprint: str
    storage: str
    trials: int | None = None
    seed: int = 0

    @property
    def key(self) -> str:
        return f"fit/{self.universe}/{self.spec.name}/fold{self.fold.index:02d}"

    @property
    def n_trials(self) -> int:
        """Finished trials the fold's study should reach (``--trials``, else ``[tuning]``)."""
        return self.trials if self.trials is not None else self.spec.tuning.trials

    @property
    def folder(self) -> Path:
        return (
            Path(self.root)
            / "tasks"
            / self.universe
            / self.spec.name
            / f"fold{self.fold.index:02d}"
        )

    @functools.cached_property
    def identity(self) -> str:
        parts = {
            "spec": self.spec.model_dump(),
            "fold": self.fold.describe(),
            "data": self.fingerprint,
            "trials": self.trials,
            "seed": self.seed,
        }
        if fit_mode(self.spec) == "trained":  # the training spec's content, not only its path
            train, model = training_of(self.spec)
            parts["training"] = {"spec": train.model_dump(), "model": model}
        return _identity(**parts)

    @property
    def study_name(self) -> str:
        return f"wf-{self.universe}-{self.spec.name}-fold{self.fold.index:02d}-{self.identity[:8]}"

    def done(self) -> dict | None:
        return task_result(self.folder / "result.json", self.identity)


@dataclass(frozen=True)
class StitchTask:
    """The stitched out-of-sample run of ``spec`` on universe ``universe``."""

    universe: str
    spec: PolicySpec
    folds: tuple[Fold, ...]
    root: str
    out: str  # folder of the policy's series (run-folder layout)
    fingerprint: str
    fit_keys: tuple[str, ...] = field(default_factory=tuple)
    fit_identities: tuple[str, ...] = field(default_factory=tuple)

    @property
    def key(self) -> str:
        return f"stitch/{self.universe}/{self.spec.name}"

    @property
    def folder(self) -> Path:
        return Path(self.root) / "tasks" / self.universe / self.spec.name

    @functools.cached_property
    def identity(self) -> str:
        return _identity(
            spec=self.spec.model_dump(),
            folds=[f.describe() for f in self.folds],
            data=self.fingerprint,
            fits=list(self.fit_identities),
        )

    def done(self) -> dict | None:
        res = task_result(self.folder / "stitched.json", self.identity)
        if res is not None and not (Path(self.out) / "returns.parquet").is_file():
            return None
        return res


def _fold_seed(task: FitTask) -> int:
    text = f"{task.seed}:{task.universe}:{task.spec.name}:{task.fold.index}"
    digest = hashlib.sha256(text.encode())
    return int.from_bytes(digest.digest()[:4], "little")


def _fit_tuned(task: FitTask, market: MarketData) -> dict:
    import numpy as np
    import optuna

    from mpo.tuning import tune
    from mpo.tuning.storage import count_trials, open_storage, recover_stale_trials
    from mpo.tuning.windows import Windows, lookback

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    spec, fold = task.spec, task.fold
    n_trials = task.n_trials
    store = open_storage(task.storage)
    with contextlib.suppress(KeyError):
        # Under the fold's lock no one else runs this study: a running trial was left by a
        # killed task. It is failed and run again; the finished trials are kept, and the
        # per-trial seeds (mpo.tuning.sampler) make the result an uninterrupted run's.
        study = optuna.load_study(study_name=task.study_name, storage=store)
        again = recover_stale_trials(study, store, every=True)
        done = count_trials(study)[0]
        if done < n_trials:
            logger.warning(
                "%s: its study was interrupted at %d of %d trials; resuming it (trials %s "
                "left running are run again)",
                task.key, done, n_trials, again or "none",
            )  # fmt: skip
    windows = Windows(
        fold.train_start,
        fold.train_end,
        fold.test_start,
        fold.test_end,
        fold.purge,
        fold.purge,
        lookback(spec),
    )
    result = tune(
        spec,
        market,
        trials=n_trials,
        windows=windows,
        storage=task.storage,
        study_name=task.study_name,
        workers=1,
        seed=_fold_seed(task),
        evaluate=False,
        progress=False,
    )
    trials = result.trials  # the study as tune read it back: no second replay of the journal
    done = trials[trials["state"] == "COMPLETE"]
    sharpes = done["sharpe_per_period"].dropna() if "sharpe_per_period" in done else []
    return {
        "params": {k: float(v) for k, v in result.best_params.items()},
        "n_trials": int(trials["state"].isin(["COMPLETE", "PRUNED"]).sum()),
        "train_sharpe": float(result.train_metrics.get("sharpe", np.nan)),
        "trial_sharpes": [float(s) for s in sharpes],
        "study": task.study_name,
        "dsr": result.deflated.get("dsr"),
    }


def _fit_trained(task: FitTask, market: MarketData) -> dict:
    from mpo.learn.refit import train_model

    train, model = training_of(task.spec)
    out = train_model(
        train,
        market,
        model,
        task.folder,
        start=task.fold.train_start,
        end=task.fold.train_end,
    )
    return {
        "params": {},
        "checkpoint": out["checkpoint"],
        "model": model,
        "n_trials": 1,
        "val_score": out["val_score"],  # early stopping's score: Sharpe (dmpo), -MSE (two_stage)
        "trial_sharpes": [],
        "splits": out["splits"],
    }


def run_fit(task: FitTask, market: MarketData) -> dict:
    """Fit ``task.spec`` on its fold (see the module docstring); returns the result dict.

    ``market`` is the universe's whole data set; this function only reads it
    up to the training window's end.
    """
    return _once(task, lambda: _fit(task, market))


def _once(task, work) -> dict:
    """``task``'s finished result, else ``work()`` under the task's lock (checked again
    inside: another process may have finished it meanwhile)."""
    done = task.done()
    if done is not None:
        logger.info("%s: finished before, skipped", task.key)
        return done
    with _locked(task.folder), _limit_threads():
        done = task.done()
        return done if done is not None else work()


def _fit(task: FitTask, market: MarketData) -> dict:
    window = market.slice(end=task.fold.train_end)
    mode = fit_mode(task.spec)
    if mode == "tuned":
        out = _fit_tuned(task, window)
    elif mode == "trained":
        out = _fit_trained(task, window)
    else:
        raise ResearchError(f"policy {task.spec.name!r} has nothing to fit.")
    out = {"identity": task.identity, "key": task.key, "mode": mode, **out}
    write_json(out, task.folder / "result.json")
    logger.info("%s: fitted (%s)", task.key, mode)
    return out


def fold_spec(spec: PolicySpec, fit: dict | None) -> PolicySpec:
    """``spec`` with a fold's fitted parameters or checkpoint."""
    from mpo.tuning.job import with_params

    if not fit:
        return spec
    if fit["mode"] == "tuned":
        return with_params(spec, fit["params"])
    return spec.with_updates(learned={"checkpoint": fit["checkpoint"]})


#: Solver a stitched run falls back to when its spec names none and the primary fails.
FALLBACK_SOLVER = "SCS"


def _optimizes(spec: PolicySpec) -> bool:
    return bool(kind_of(spec).tunable) and not kind_of(spec).learned


def run_stitch(task: StitchTask, market: MarketData, *fits: dict) -> dict:
    """Simulate ``task.spec`` over all test windows in one backtest; write its series."""
    return _once(task, lambda: _stitch(task, market, fits))


def _stitch(task: StitchTask, market: MarketData, fits: tuple) -> dict:
    import pandas as pd

    from mpo.backtest import save_result
    from mpo.research.stitch import stitched_backtest

    folds = task.folds
    specs = [fold_spec(task.spec, f) for f in fits] if fits else [task.spec]
    starts = [f.test_start for f in folds] if fits else [folds[0].test_start]
    cal = market.calendar
    last = int(cal.searchsorted(folds[-1].test_end, side="right"))
    end = cal[last]
    retry = None
    try:
        result = stitched_backtest(task.spec.name, specs, starts, market, end)
    except SolverError as exc:
        if any(s.backtest.fallback_solver for s in specs) or not _optimizes(specs[0]):
            raise
        retry = str(exc)
        logger.warning(
            "%s: %s; simulating again with fallback solver %s on the dates where the "
            "primary solver fails ([backtest] fallback_solver sets it)",
            task.key, exc, FALLBACK_SOLVER,
        )  # fmt: skip
        specs = [s.with_updates(backtest={"fallback_solver": FALLBACK_SOLVER}) for s in specs]
        result = stitched_backtest(task.spec.name, specs, starts, market, end)
    save_result(result, task.out)
    out = {
        "identity": task.identity,
        "key": task.key,
        "out": str(task.out),
        "fallback": None if retry is None else {"solver": FALLBACK_SOLVER, "after": retry},
        "periods": len(result.returns),
        "created": pd.Timestamp.now().isoformat(timespec="seconds"),
    }
    write_json(out, task.folder / "stitched.json")
    logger.info("%s: %d periods simulated", task.key, len(result.returns))
    return out
